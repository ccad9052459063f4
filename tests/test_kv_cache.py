"""RowKVCache.commit: each row keeps its accepted tentative tokens, in order, right after its own
committed ones, whatever the other rows keep and whatever shape each layer's buffers have."""

import torch

from scylla_impl.kv_cache import RowKVCache


def test_commit_moves_each_rows_accepted_tokens_down_to_its_own_length():
    torch.manual_seed(0)
    b, prompt, tree = 3, [5, 2, 4], 6
    # Two layers of different head counts and widths: a layer's buffers are indexed by its own shape.
    shapes = [(2, 8), (3, 4)]  # (kv heads, head dim)
    cache = RowKVCache(len(shapes), b, "cpu", capacity=16)
    longest = max(prompt)
    written = []
    for layer, (h, d) in enumerate(shapes):
        key, value = torch.randn(2, b, h, longest, d).unbind(0)
        cache.update(layer, key, value)
        written.append((key, value))
    cache.advance(torch.arange(longest).expand(b, longest))
    cache.commit(torch.arange(longest).expand(b, longest), torch.tensor(prompt))
    assert cache.lengths.tolist() == prompt and cache.committed_end == longest

    tree_written = []
    for layer, (h, d) in enumerate(shapes):
        key, value = torch.randn(2, b, h, tree, d).unbind(0)
        cache.update(layer, key, value)
        tree_written.append((key, value))
    cache.advance(torch.zeros(b, tree, dtype=torch.long))
    # Row 0 keeps nodes 0, 2, 5; row 1 node 0 only (padded with nodes it must not keep); row 2
    # nodes 0, 1, 3, 4. Rows shorter than the longest prompt have holes before the tree.
    keep = torch.tensor([[0, 2, 5, 0], [0, 4, 5, 0], [0, 1, 3, 4]])
    counts = torch.tensor([3, 1, 4])
    cache.commit(keep, counts)

    assert cache.lengths.tolist() == [p + c for p, c in zip(prompt, counts.tolist())]
    assert cache.tentative == 0 and cache.committed_end == max(cache.lengths.tolist())
    for layer in range(len(shapes)):
        for buf, before, tree_kv in zip((cache.keys[layer], cache.values[layer]), written[layer], tree_written[layer]):
            for row in range(b):
                n, c = prompt[row], int(counts[row])
                assert torch.equal(buf[row, :, :n], before[row, :, :n])  # the prompt stays where it was
                accepted = tree_kv[row, :, keep[row, :c]]  # [h, c, d]
                assert torch.equal(buf[row, :, n:n + c], accepted), (layer, row)
