"""A draft's RMSNorm as one operator (scylla_impl/row_norm.py): eager's bits at every width
where ATen sums in the order it follows, eager elsewhere; and the fused operators only in decode
steps (training keeps autograd's eager ones)."""

import pytest
import torch

from scylla_impl import skinny_linear
from scylla_impl.drafts import layers
from scylla_impl.drafts.layers import DraftLayer, RMSNorm, _fused_norm_is_eager, _rms_norm, rotary

pytestmark = pytest.mark.usefixtures("cpu_kernels")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("width", [8, 33, 576, 960, 2048, 4096, 8192 + 8, 70_000])
def test_rms_norm_gives_eager_bits(dtype, width):
    # Widths of 64 and more vectors of 8 run multi_row_sum's cascade of 16-row levels; 70,000
    # crosses two levels and leaves vectors and floats over.
    gen = torch.Generator().manual_seed(width)
    x = (torch.randn(5, 3, width, generator=gen) * 4).to(dtype)
    weight = torch.randn(width, generator=gen).to(dtype)
    got = torch.ops.scylla.rms_norm(x, weight, 1e-5)
    assert got.shape == x.shape and got.dtype == dtype
    assert torch.equal(got, _rms_norm(x, weight, 1e-5))


def test_a_width_where_aten_sums_otherwise_stays_eager():
    # Under 8 floats ATen's sum takes a scalar path the kernel does not follow.
    assert not _fused_norm_is_eager(7) and _fused_norm_is_eager(576)
    norm = RMSNorm(7)
    x = torch.randn(3, 7) * 3
    with torch.inference_mode():
        ran = _ops_run(lambda: norm(x))
        assert torch.equal(norm(x), _rms_norm(x, norm.weight, norm.eps))
    assert "scylla::rms_norm" not in ran


def _ops_run(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {event.key for event in prof.key_averages()}


def test_a_decode_step_takes_the_kernels_and_training_keeps_autograd(monkeypatch):
    torch.manual_seed(0)
    dtype = skinny_linear.built_dtypes()[-1]  # bf16 where the CPU has it
    layer = DraftLayer(64, 128, heads=4, kv_heads=2, head_dim=16, eps=1e-6).to(dtype)
    x = torch.randn(1, 5, 64, dtype=dtype)
    cos, sin = rotary(torch.arange(5)[None], 16, 10000.0, dtype)
    mask = torch.ones(1, 1, 5, 5, dtype=torch.bool).tril()

    with torch.inference_mode():
        ran = _ops_run(lambda: layer(x, cos, sin, mask, None, 0))
        fused = layer(x, cos, sin, mask, None, 0)
        monkeypatch.setattr(layers, "_kernel_takes", lambda *tensors: False)
        eager = layer(x, cos, sin, mask, None, 0)
    assert {"scylla::rms_norm", "scylla::rotary"} <= ran
    assert torch.equal(fused, eager)

    monkeypatch.undo()
    ran = _ops_run(lambda: layer(x, cos, sin, mask, None, 0).float().sum().backward())
    assert not {"scylla::rms_norm", "scylla::rotary"} & ran
    assert layer.post_attention_layernorm.weight.grad is not None
