"""Triton streaming kernels for GPU bandwidth: read, copy, triad. One block of elements per program.

* read:  partial[p] = sum(x[p*BLOCK:(p+1)*BLOCK])   (a reduction, so the loads cannot be elided)
* copy:  dst = src
* triad: a = b + scalar * c                          (STREAM's triad)

The kernels are plain functions decorated on first use by `kernels()`, so importing
roofline never touches the Triton compiler. To run them on CPU tensors in Triton's
interpreter, set TRITON_INTERPRET=1 before Triton itself is imported (in the process
environment): Triton decides compiler vs interpreter when a function is decorated, and
its own library helpers such as `tl.sum` are decorated when `triton.language` is imported.
The interpreter computes fp32 exactly; its bf16 arithmetic is not faithful, so both the
tests and the profile run these kernels in fp32.

Without an importable Triton, `TRITON_ERROR` says why and `kernels()` raises.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl
except Exception as err:  # ImportError, or a broken install raising at import
    triton = tl = None
    TRITON_ERROR: str | None = f"triton not importable: {type(err).__name__}: {err}"
else:
    TRITON_ERROR = None


if tl is not None:

    def _read(x_ptr, partial_ptr, n, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs, mask=offs < n, other=0.0, eviction_policy="evict_first")
        tl.store(partial_ptr + pid, tl.sum(x, axis=0))

    def _copy(src_ptr, dst_ptr, n, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(src_ptr + offs, mask=mask, eviction_policy="evict_first")
        tl.store(dst_ptr + offs, x, mask=mask)

    def _triad(a_ptr, b_ptr, c_ptr, scalar, n, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        b = tl.load(b_ptr + offs, mask=mask, eviction_policy="evict_first")
        c = tl.load(c_ptr + offs, mask=mask, eviction_policy="evict_first")
        tl.store(a_ptr + offs, b + scalar * c, mask=mask)

    _BODIES = {"read": _read, "copy": _copy, "triad": _triad}
else:
    _BODIES = {}


@dataclass(frozen=True)
class LaunchConfig:
    """Block size (elements per program) and warps per program of one launch."""

    block: int = 4096
    num_warps: int = 8


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_compiled: dict[bool, dict[str, Callable]] = {}


def kernels() -> dict[str, Callable]:
    """name -> jitted kernel, compiled for the current mode (GPU, or interpreter when TRITON_INTERPRET=1)."""
    if triton is None:
        raise RuntimeError(TRITON_ERROR)
    mode = interpreting()
    if mode not in _compiled:
        _compiled[mode] = {name: triton.jit(body) for name, body in _BODIES.items()}
    return _compiled[mode]


def _grid(n: int, cfg: LaunchConfig) -> tuple[int]:
    return (triton.cdiv(n, cfg.block),)


def _launch_kwargs(cfg: LaunchConfig) -> dict:
    # Compiler options mean nothing to the interpreter; pass them only to the compiler.
    # FP fusion is requested explicitly (Triton warns when left to its changing default):
    # the triad may use one FMA, and stays exact on the profile's integer-valued data.
    if interpreting():
        return {"BLOCK": cfg.block}
    return {"BLOCK": cfg.block, "num_warps": cfg.num_warps, "enable_fp_fusion": True}


def read(x: torch.Tensor, partials: torch.Tensor, cfg: LaunchConfig) -> None:
    n = x.numel()
    if partials.numel() != triton.cdiv(n, cfg.block):
        raise ValueError(f"read: partials must hold {triton.cdiv(n, cfg.block)} values, one per block")
    kernels()["read"][_grid(n, cfg)](x, partials, n, **_launch_kwargs(cfg))


def copy(src: torch.Tensor, dst: torch.Tensor, cfg: LaunchConfig) -> None:
    n = src.numel()
    kernels()["copy"][_grid(n, cfg)](src, dst, n, **_launch_kwargs(cfg))


def triad(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, scalar: float, cfg: LaunchConfig) -> None:
    n = a.numel()
    kernels()["triad"][_grid(n, cfg)](a, b, c, scalar, n, **_launch_kwargs(cfg))
