"""A draft's rotary embedding as one operator (scylla_impl/row_rotary.py): eager's bits."""

import pytest
import torch

from scylla_impl.drafts.layers import _rotate_half, rotary

pytestmark = pytest.mark.usefixtures("cpu_kernels")


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
