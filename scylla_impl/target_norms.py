"""The target's RMSNorms through row_norm.py's operator in decode steps, with their own bits.

A Llama-style RMSNorm in eager PyTorch is eight small operators, and a decode step of the
embedded target runs 61 of them (two a layer and the final one): on a 2-core EPYC an AR step
took 14.84 ms with them and 14.10 ms with the operator in bf16 (22.29 -> 21.67 in fp32), with
the same tokens. Architectures write their norm in many ways (Gemma's 1 + weight, a bias,
another order of casts), so `install` does not trust names: it swaps in the operator only for
a module that gives the operator's bits on random rows with its own weight, and the swapped
module runs its own forward wherever the operator does not apply (autograd, torch.compile,
another dtype, extra arguments, many rows).
"""

import torch
from torch import nn

from scylla_impl import row_norm, skinny_linear

# The operator runs on one thread: beyond a decode step's rows the module's own (threaded)
# operators are faster.
MAX_ROWS = 256


class _RowNorm:
    """Mixed in front of a norm module's own class (`install`): its forward through the operator
    where a decode step allows, else the class's own."""

    row_norm_eps: float

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        rows = hidden_states.numel() // max(hidden_states.shape[-1], 1)
        if args or kwargs or rows > MAX_ROWS or not skinny_linear.kernel_takes(hidden_states, self.weight):
            return super().forward(hidden_states, *args, **kwargs)
        return torch.ops.scylla.rms_norm(hidden_states, self.weight, self.row_norm_eps)


_SUBCLASSES: dict[type, type] = {}


def _eps(module: nn.Module) -> float | None:
    for name in ("variance_epsilon", "eps", "epsilon"):  # what transformers' norms call it
        value = getattr(module, name, None)
        if isinstance(value, float):
            return value
    return None


def _candidate_eps(module: nn.Module) -> float | None:
    """The eps of a module shaped like an RMSNorm the operator could stand for (a leaf with a 1-D
    CPU weight in a dtype the extension was built for, no bias), else None."""
    weight = getattr(module, "weight", None)
    if not (isinstance(weight, nn.Parameter) and weight.dim() == 1 and weight.device.type == "cpu"
            and weight.dtype in skinny_linear.built_dtypes() and getattr(module, "bias", None) is None
            and next(module.children(), None) is None and not isinstance(module, _RowNorm)):
        return None
    return _eps(module)


def install(model: nn.Module) -> int:
    """Route `model`'s RMSNorm modules whose bits the operator repeats through it in decode
    steps; returns how many. Needs the extension built (skinny_linear.install builds it)."""
    swapped = 0
    for module in model.modules():
        eps = _candidate_eps(module)
        if eps is None or not row_norm.repeats(module, module.weight, eps):
            continue
        cls = type(module)
        if cls not in _SUBCLASSES:
            _SUBCLASSES[cls] = type(cls.__name__, (_RowNorm, cls), {"__module__": cls.__module__})
        module.__class__ = _SUBCLASSES[cls]
        module.row_norm_eps = eps
        swapped += 1
    return swapped


__all__ = ["MAX_ROWS", "install"]
