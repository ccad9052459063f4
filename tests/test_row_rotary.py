"""A draft's rotary embedding as one operator (scylla_impl/row_rotary.py): eager's bits, and only
in decode steps (training keeps autograd's eager operators)."""

import pytest
import torch

from scylla_impl import skinny_linear
from scylla_impl.drafts import layers
from scylla_impl.drafts.layers import DraftLayer, _rotate_half, rotary


@pytest.fixture(scope="module", autouse=True)
def built():
    assert skinny_linear.kernel() is not None, "the kernels must build where the tests run"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads, dim, batch_of_tables", [(9, 64, 1), (3, 64, 2), (4, 128, 2), (2, 80, 1)])
def test_rotary_gives_eager_bits(dtype, heads, dim, batch_of_tables):
    gen = torch.Generator().manual_seed(heads * dim)
    # As DraftAttention makes it: a projection's [b, q, heads, dim] viewed as [b, heads, q, dim].
    x = (torch.randn(2, 7, heads, dim, generator=gen) * 4).to(dtype).transpose(1, 2)
    positions = torch.randint(0, 5000, (batch_of_tables, 7), generator=gen)
    cos, sin = rotary(positions, dim, 10000.0, dtype)  # [1 or 2, 1, 7, dim]
    got = torch.ops.scylla.rotary(x, cos, sin)
    assert got.shape == x.shape and got.dtype == dtype
    assert torch.equal(got, x * cos + _rotate_half(x) * sin)


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
    assert "scylla::rotary" in ran
    assert torch.equal(fused, eager)

    monkeypatch.undo()
    ran = _ops_run(lambda: layer(x, cos, sin, mask, None, 0).float().sum().backward())
    assert "scylla::rotary" not in ran
    assert layer.post_attention_layernorm.weight.grad is not None
