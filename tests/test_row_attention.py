"""Decode-step attention (scylla_impl/row_attention.py): SDPA's result, and for each query the
same bits whatever the key layout around what it sees, which is what makes a tree verify and
an AR step agree exactly in bf16 (the whole-model check: tests/test_decode_lossless.py)."""

import pytest
import torch
import torch.nn.functional as F

TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


pytestmark = pytest.mark.usefixtures("cpu_kernels")


def attention(q, k, v, mask):
    return torch.ops.scylla.row_attention(q, k, v, mask, q.shape[-1] ** -0.5)  # [b, q, h, d]


def additive(visible: torch.Tensor, dtype) -> torch.Tensor:
    return torch.zeros(visible.shape, dtype=dtype).masked_fill_(~visible, torch.finfo(dtype).min)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads, kv_heads, dim, queries, keys", [(9, 3, 64, 1, 200), (4, 4, 8, 7, 33),
                                                                (8, 2, 80, 60, 300), (2, 1, 128, 5, 17)])
def test_equals_sdpa(dtype, heads, kv_heads, dim, queries, keys):
    gen = torch.Generator().manual_seed(keys)
    q = torch.randn(2, heads, queries, dim, generator=gen).to(dtype)
    k, v = (torch.randn(2, kv_heads, keys, dim, generator=gen).to(dtype) for _ in range(2))
    visible = torch.rand(2, 1, queries, keys, generator=gen) < 0.7
    visible[..., 0] = True  # every query sees a key
    mask = additive(visible, dtype)
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask.float(), enable_gqa=True)
    got = attention(q, k, v, mask)
    assert got.dtype == dtype and got.shape == (2, queries, heads, dim)
    torch.testing.assert_close(got.float(), want.transpose(1, 2), **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_query_gets_the_same_bits_in_any_layout(dtype):
    """A token's keys laid out as an AR step has them (prefix, then its ancestors, contiguous)
    and as a tree verify has them (siblings and cousins interleaved and masked, more slots,
    more queries): the same output bits."""
    gen = torch.Generator().manual_seed(1)
    prefix, path, dim = 203, 3, 64
    keys = torch.randn(1, 3, prefix + 40, dim, generator=gen).to(dtype)
    values = torch.randn(1, 3, prefix + 40, dim, generator=gen).to(dtype)
    query = torch.randn(1, 9, 1, dim, generator=gen).to(dtype)
    # AR: prefix + the path's keys at the next slots, this query alone.
    ar_mask = additive(torch.ones(1, 1, 1, prefix + path, dtype=torch.bool), dtype)
    ar = attention(query, keys[:, :, :prefix + path], values[:, :, :prefix + path], ar_mask)
    # Tree: the path's keys at slots prefix + 5, + 11, + 30 with others between; 23 more queries.
    slots = torch.arange(prefix + 40)
    tree_k, tree_v = torch.randn_like(keys.float()).to(dtype), torch.randn_like(values.float()).to(dtype)
    tree_k[:, :, :prefix], tree_v[:, :, :prefix] = keys[:, :, :prefix], values[:, :, :prefix]
    for j, slot in enumerate((prefix + 5, prefix + 11, prefix + 30)):
        tree_k[:, :, slot], tree_v[:, :, slot] = keys[:, :, prefix + j], values[:, :, prefix + j]
    sees = (slots < prefix) | torch.isin(slots, torch.tensor([prefix + 5, prefix + 11, prefix + 30]))
    others = torch.rand(23, prefix + 40, generator=gen) < 0.5
    visible = torch.cat([others[:10], sees[None], others[10:]])[None, None]  # the query is the 11th of 24
    queries = torch.randn(1, 9, 24, dim, generator=gen).to(dtype)
    queries[:, :, 10] = query[:, :, 0]
    tree = attention(queries, tree_k, tree_v, additive(visible, dtype))
    assert torch.equal(tree[:, 10], ar[:, 0])


def test_bad_shapes_are_refused():
    q, k = torch.randn(1, 4, 2, 8), torch.randn(1, 3, 5, 8)  # 4 heads over 3 KV heads
    with pytest.raises(RuntimeError, match="shapes"):
        attention(q, k, k, torch.zeros(1, 1, 2, 5))
    with pytest.raises(RuntimeError, match="mask shape"):
        attention(q, k[:, :2], k[:, :2], torch.zeros(1, 1, 2, 4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_draft_tree_level_goes_through_it(dtype, monkeypatch):
    """A draft's tree level (no grad, a few queries) is attended by the kernel where it was built
    for the dtype (bf16 where the CPU has AVX512-BF16) and gives what SDPA gives; with grad
    (training), or in a dtype the kernel was not built for, draft_mask keeps the bool mask and
    the call goes to SDPA."""
    from scylla_impl import gqa_attention, skinny_linear

    decided = []
    applies = gqa_attention._row_attention_applies
    monkeypatch.setattr(gqa_attention, "_row_attention_applies", lambda *a: decided.append(applies(*a)) or decided[-1])
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 9, 10, 64, generator=gen).to(dtype)  # a 10-token level of the embedded default's drafts
    k, v = (torch.randn(2, 3, 210, 64, generator=gen).to(dtype) for _ in range(2))
    visible = torch.ones(1, 1, 10, 210, dtype=torch.bool)  # one mask for both rows, broadcast as SDPA takes it
    visible[..., 200:] = torch.eye(10, dtype=torch.bool)  # each tree token sees the prefix and itself
    with torch.no_grad():
        mask = gqa_attention.draft_mask(visible, 2, dtype)  # additive [2, 1, 10, 210], as the kernel takes it
        got = gqa_attention.draft_attention(q, k, v, mask)  # [2, 10, 9 * 64]
    if dtype in skinny_linear.built_dtypes():
        assert mask.shape == (2, 1, 10, 210) and mask.dtype == dtype and decided == [True]
    else:
        assert mask is visible and decided == [False], "no kernel for this dtype: the mask stays SDPA's"
    with torch.enable_grad():
        mask = gqa_attention.draft_mask(visible, 2, dtype)
        want = gqa_attention.draft_attention(q.requires_grad_(), k, v, mask)
    assert mask is visible and decided[1:] == [False], "with grad the mask stays SDPA's and the kernel declines"
    torch.testing.assert_close(got.float(), want.detach().float(), **TOLERANCE[dtype])
