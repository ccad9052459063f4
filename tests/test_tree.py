"""The EAGLE-2 dynamic tree and greedy verification on a small hand-checked example."""

import math

import pytest
import torch

from scylla_impl.tree import Tree, ancestor_mask, build_tree, graft_chain, retrieve_paths
from scylla_impl.tree_shape import pool_size
from scylla_impl.verify import top_token, verify_greedy

V = 12
ROOT = 11
# Draft probabilities of the next token after each token (k=2 children are taken).
NEXT = {
    1: {3: 0.55, 4: 0.40},
    2: {5: 0.90, 6: 0.05},
    3: {7: 0.50, 8: 0.10},
    5: {9: 0.80, 7: 0.10},
}


def _logprobs(table: dict[int, float]) -> torch.Tensor:
    lp = torch.full((V,), -30.0)
    for tok, p in table.items():
        lp[tok] = math.log(p)
    return lp


class ScriptedDraft:
    """Returns fixed distributions per input token and records the masks it is given."""

    def __init__(self):
        self.masks = []
        self.depths = []
        self.rolled_back = False

    def to_target(self, ids):
        return ids

    def expand(self, tokens, hidden, depths, new_mask):
        self.masks.append(new_mask.clone())
        self.depths.append(depths.clone())
        lp = torch.stack([torch.stack([_logprobs(NEXT.get(int(t), {})) for t in row]) for row in tokens])
        return lp, hidden + 1

    def rollback(self):
        self.rolled_back = True


def _tree(total_tokens=7):
    draft = ScriptedDraft()
    root_lp = _logprobs({1: 0.6, 2: 0.3})[None]
    tree = build_tree(draft, root_lp, torch.zeros(1, 4), torch.tensor([ROOT]), top_k=2, depth=3,
                      total_tokens=total_tokens)
    return tree, draft


def test_pool_size_formula():
    assert pool_size(2, 3) == 2 + 2 * 4
    assert pool_size(10, 5) == 10 + 4 * 100
    assert pool_size(1, 6) == 6  # top_k 1 is a chain


def test_tree_nodes_parents_depths():
    tree, draft = _tree()
    # Pool (cumulative p): 1:.6 2:.3 | 1>3:.33 1>4:.24 2>5:.27 2>6:.015 | 3>7:.165 3>8:.033 5>9:.216 5>7:.027
    # Top-6 by score, in pool order: 1, 2, 1>3, 1>4, 2>5, 5>9.
    assert tree.tokens.tolist() == [[ROOT, 1, 2, 3, 4, 5, 9]]
    assert tree.parents.tolist() == [[-1, 0, 0, 1, 1, 2, 5]]
    assert tree.depths.tolist() == [[0, 1, 1, 2, 2, 2, 3]]
    assert draft.rolled_back


def test_ancestor_mask_and_paths():
    tree, _ = _tree()
    mask = tree.mask[0].int().tolist()
    assert mask[6] == [1, 0, 1, 0, 0, 1, 1]  # 9 sees root, 2, 5 and itself
    assert mask[3] == [1, 1, 0, 1, 0, 0, 0]
    assert mask[0] == [1, 0, 0, 0, 0, 0, 0]
    assert retrieve_paths(tree, 0) == [[0, 1, 3], [0, 1, 4], [0, 2, 5, 6]]  # one per leaf


def test_draft_sees_only_ancestors_while_expanding():
    _, draft = _tree()
    # Level 2: frontier (1, 2) sees only itself; level 3: frontier (3, 5) sees its level-2 parent.
    assert draft.masks[0].int().tolist() == [[[1, 0], [0, 1]]]
    assert draft.masks[1].int().tolist() == [[[1, 0, 1, 0], [0, 1, 0, 1]]]
    assert [d.tolist() for d in draft.depths] == [[[0, 0]], [[1, 1]]]


def test_top_k_one_is_a_chain():
    draft = ScriptedDraft()
    tree = build_tree(draft, _logprobs({1: 0.6, 2: 0.3})[None], torch.zeros(1, 4), torch.tensor([ROOT]),
                      top_k=1, depth=3, total_tokens=4)
    assert tree.tokens.tolist() == [[ROOT, 1, 3, 7]]
    assert tree.parents.tolist() == [[-1, 0, 1, 2]]


def test_greedy_verify_takes_longest_matching_path_and_bonus():
    tree, _ = _tree()
    logits = torch.zeros(1, 7, V)
    after = {0: 2, 1: 4, 2: 5, 3: 0, 4: 0, 5: 9, 6: 7}  # target argmax after each node
    for node, tok in after.items():
        logits[0, node, tok] = 5.0
    verdict = verify_greedy(tree, logits)
    assert verdict.path[0, : int(verdict.path_len[0])].tolist() == [0, 2, 5, 6]
    assert verdict.accepted.tolist() == [3]
    assert verdict.bonus.tolist() == [7]


def test_greedy_verify_rejects_everything():
    tree, _ = _tree()
    logits = torch.zeros(1, 7, V)
    logits[0, :, 10] = 1.0  # the target never agrees with the draft
    verdict = verify_greedy(tree, logits)
    assert verdict.path_len.tolist() == [1]
    assert verdict.bonus.tolist() == [10]


def test_root_only_tree_is_autoregressive():
    tree = Tree.root_only(torch.tensor([5, 6]))
    logits = torch.zeros(2, 1, V)
    logits[0, 0, 3] = logits[1, 0, 4] = 1.0
    verdict = verify_greedy(tree, logits)
    assert verdict.path_len.tolist() == [1, 1]
    assert verdict.bonus.tolist() == [3, 4]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_top_token_is_argmax_on_ties_and_nan(dtype):
    """The greedy decoders' choice (max's index, faster than argmax in bf16) is argmax's: the
    first of tied maxima, and a NaN where a row holds one."""
    gen = torch.Generator().manual_seed(0)
    for vocab in (1, 17, 49152, 65537):
        logits = (torch.randn(3, 5, vocab, generator=gen) * 0.02).round().to(dtype)  # ties at the top
        logits[1, 2, torch.randint(0, vocab, (4,), generator=gen)] = logits.max()
        logits[2, 0, vocab // 2] = float("nan")
        assert torch.equal(top_token(logits), logits.argmax(-1))


def test_a_lookup_chain_is_grafted_as_a_trie_and_verified_with_the_tree():
    tree, _ = _tree()  # root 11 -> 1 (-> 3, 4), 2 (-> 5 -> 9)
    two = Tree(*(torch.cat([getattr(tree, f)] * 2) for f in ("tokens", "parents", "depths", "mask")))
    # Row 0's chain runs along 2 -> 5, then leaves the tree: only 8, 10 are new, under node 5.
    # Row 1's chain is the existing path 1 -> 3, then 6: one new node, and one spare leaf under
    # the root (a token no child of the root holds) so both rows score the same number.
    grafted = graft_chain(two, [[2, 5, 8, 10], [1, 3, 6]], length=4)
    assert grafted.tokens.tolist() == [[ROOT, 1, 2, 3, 4, 5, 9, 8, 10], [ROOT, 1, 2, 3, 4, 5, 9, 6, 0]]
    assert grafted.parents.tolist() == [[-1, 0, 0, 1, 1, 2, 5, 5, 7], [-1, 0, 0, 1, 1, 2, 5, 3, 0]]
    assert grafted.depths.tolist() == [[0, 1, 1, 2, 2, 2, 3, 3, 4], [0, 1, 1, 2, 2, 2, 3, 3, 1]]
    assert torch.equal(grafted.mask, ancestor_mask(grafted.parents, 4))
    for row in range(2):  # siblings stay distinct: what lossless sampling needs
        pairs = list(zip(grafted.parents[row].tolist(), grafted.tokens[row].tolist()))
        assert len(set(pairs)) == len(pairs)
    # The target follows row 0's chain past the draft's nodes: the whole chain is accepted.
    logits = torch.zeros(2, 9, V)
    for node, tok in {0: 2, 2: 5, 5: 8, 7: 10, 8: 4}.items():
        logits[0, node, tok] = 5.0
    logits[1, :, 10] = 1.0
    verdict = verify_greedy(grafted, logits)
    assert verdict.path[0].tolist() == [0, 2, 5, 7, 8] and verdict.bonus.tolist() == [4, 10]
    assert verdict.accepted.tolist() == [4, 0]
    # Chains the tree already holds, or none at all, leave it as it was.
    assert graft_chain(two, [[1, 3], []], length=4) is two
    assert graft_chain(two, [[2, 5, 9, 7], [1]], length=3) is two
