"""EAGLE-2's dynamic draft tree, one per batch row, built with batched tensor ops.

k = top_k, D = depth, N = total_tokens - 1. Level 1 is the top-k of the root's log-probs.
Each further level runs the k frontier nodes together, takes the top-k children of each
(k*k candidates scored by cumulative log-prob), adds all of them to the pool and keeps
the global top-k as the next frontier. The pool holds k + (D-1)k^2 candidates; the tree
is the root plus the pool's top-N, sorted by pool index so parents precede children.
"""

from dataclasses import dataclass

import torch

from scylla_impl.contracts import DraftModel


@dataclass
class Tree:
    tokens: torch.Tensor  # [b, n] target token ids; node 0 is the root
    parents: torch.Tensor  # [b, n] index of the parent node; -1 for the root
    depths: torch.Tensor  # [b, n] 0 for the root
    mask: torch.Tensor  # [b, n, n] bool: node i may attend to node j (j is i or an ancestor)

    @property
    def size(self) -> int:
        return self.tokens.shape[1]

    @classmethod
    def root_only(cls, roots: torch.Tensor) -> "Tree":
        b = roots.shape[0]
        return cls(roots[:, None], roots.new_full((b, 1), -1), roots.new_zeros(b, 1),
                   torch.ones(b, 1, 1, dtype=torch.bool, device=roots.device))


def ancestor_mask(parents: torch.Tensor, max_depth: int) -> torch.Tensor:
    """Closure of `parents` [b, n] (-1 = root): mask[b, i, j] = j is i or an ancestor of i."""
    b, n = parents.shape
    eye = torch.eye(n, dtype=torch.bool, device=parents.device).expand(b, n, n)
    mask = eye.clone()
    up = parents.clamp(min=0)
    for _ in range(max_depth):  # each pass climbs one more level
        mask = eye | mask.gather(1, up[:, :, None].expand(b, n, n)) & (parents >= 0)[:, :, None] | mask
    return mask


def retrieve_paths(tree: Tree, row: int) -> list[list[int]]:
    """One root-to-leaf path (node indices) per leaf of `row`'s tree."""
    parents = tree.parents[row].tolist()
    has_child = {p for p in parents if p >= 0}
    paths = []
    for leaf in range(len(parents)):
        if leaf in has_child:
            continue
        path = [leaf]
        while parents[path[-1]] >= 0:
            path.append(parents[path[-1]])
        paths.append(path[::-1])
    return paths


@dataclass
class Pool:
    """Every candidate an EAGLE-2 tree draws from, in pool order (level by level)."""

    scores: torch.Tensor  # [b, P] cumulative draft log-prob of each candidate
    tokens: torch.Tensor  # [b, P] target token ids
    parents: torch.Tensor  # [b, P] pool index of the parent; -1 under the root
    top_k: int

    def levels(self) -> torch.Tensor:
        """[P] depth of each pool entry (1 for the root's children)."""
        k, pool = self.top_k, self.scores.shape[1]
        return torch.cat([torch.ones(k, dtype=torch.long, device=self.scores.device),
                          2 + torch.arange(pool - k, device=self.scores.device) // (k * k)])


def grow_pool(draft: DraftModel, root_logprobs: torch.Tensor, root_out: torch.Tensor, top_k: int, depth: int,
              timer=None) -> Pool:
    """Grow the candidate pool with `draft` (after its `extend`), then roll the draft's cache back.

    root_logprobs [b, V'] and root_out [b, h]: the draft's prediction at the root.
    `timer(phase)` (optional) attributes time to "draft" forwards vs "tree" bookkeeping.
    """
    b, k, device = root_logprobs.shape[0], top_k, root_logprobs.device
    ar = torch.arange(k, device=device)
    scores, ids = root_logprobs.topk(k, dim=-1)  # [b, k]
    pool_scores, pool_tokens = [scores], [draft.to_target(ids)]
    pool_parents = [torch.full((b, k), -1, dtype=torch.long, device=device)]
    frontier_pool = ar.expand(b, k)  # pool index of each frontier node
    frontier_tokens = pool_tokens[0]
    frontier_out = root_out[:, None, :].expand(b, k, root_out.shape[-1])
    ancestors = torch.zeros(b, k, 0, dtype=torch.bool, device=device)  # over the draft's tentative slots
    for level in range(1, depth):
        new_mask = torch.cat([ancestors, torch.eye(k, dtype=torch.bool, device=device).expand(b, k, k)], dim=-1)
        if timer:
            timer("draft")
        logprobs, out = draft.expand(frontier_tokens, frontier_out, torch.full((b, k), level - 1, device=device), new_mask)
        if timer:
            timer("tree")
        child_scores, child_ids = logprobs.topk(k, dim=-1)  # [b, k, k]
        cand_scores = (scores[:, :, None] + child_scores).reshape(b, k * k)
        cand_parent = frontier_pool[:, :, None].expand(b, k, k).reshape(b, k * k)
        pool_scores.append(cand_scores)
        pool_tokens.append(draft.to_target(child_ids).reshape(b, k * k))
        pool_parents.append(cand_parent)
        scores, best = cand_scores.topk(k, dim=-1)
        parent_slot = best // k  # which frontier node each new frontier node hangs from
        offset = k + (level - 1) * k * k
        frontier_pool = offset + best
        frontier_tokens = pool_tokens[-1].gather(1, best)
        frontier_out = out.gather(1, parent_slot[:, :, None].expand(b, k, out.shape[-1]))
        slot = torch.nn.functional.one_hot(parent_slot, k).bool()  # the parent's own tentative slot
        ancestors = torch.cat([ancestors.gather(1, parent_slot[:, :, None].expand(b, k, ancestors.shape[-1])), slot], dim=-1)
    if timer:
        timer("draft")
    draft.rollback()
    if timer:
        timer("tree")
    return Pool(torch.cat(pool_scores, 1), torch.cat(pool_tokens, 1), torch.cat(pool_parents, 1), k)


def keep_order(scores: torch.Tensor) -> torch.Tensor:
    """[b, P] pool indices from first kept to last: descending score, and on equal scores the
    lower pool index (a parent, never its child) first, so every prefix is closed under ancestors."""
    return torch.sort(-scores, dim=1, stable=True).indices


def build_tree(draft: DraftModel, root_logprobs: torch.Tensor, root_out: torch.Tensor, roots: torch.Tensor,
               top_k: int, depth: int, total_tokens: int, timer=None) -> Tree:
    """The tree of `total_tokens` (root included) that EAGLE-2 verifies; see `grow_pool`."""
    pool = grow_pool(draft, root_logprobs, root_out, top_k, depth, timer)
    return _select(pool, roots, depth, total_tokens - 1)


def _select(pool: Pool, roots, depth, n_keep) -> Tree:
    scores, tokens, parents = pool.scores, pool.tokens, pool.parents
    b, size = scores.shape
    device = scores.device
    order = keep_order(scores)[:, :n_keep]
    chosen = torch.sort(order, dim=1).values  # [b, N] pool indices, parents first
    node_of = torch.full((b, size), -1, dtype=torch.long, device=device)
    node_of.scatter_(1, chosen, torch.arange(1, n_keep + 1, device=device).expand(b, n_keep))
    pool_parent = parents.gather(1, chosen)
    node_parent = torch.where(pool_parent < 0, 0, node_of.gather(1, pool_parent.clamp(min=0)))
    tree_parents = torch.cat([torch.full((b, 1), -1, dtype=torch.long, device=device), node_parent], 1)
    tree_tokens = torch.cat([roots[:, None], tokens.gather(1, chosen)], 1)
    tree_depths = torch.cat([torch.zeros(b, 1, dtype=torch.long, device=device), pool.levels()[chosen]], 1)
    if (node_parent < 0).any():
        raise AssertionError("draft tree lost a parent: selection is not ancestor-closed")
    return Tree(tree_tokens, tree_parents, tree_depths, ancestor_mask(tree_parents, depth))


def graft_chain(tree: Tree, chains: list[list[int]], length: int) -> Tree:
    """`tree` with each row's chain (up to `length` target ids, a prompt-lookup proposal) hung
    under its root as a trie: where the chain runs along existing nodes it reuses them, and only
    the rest is added, so siblings stay distinct (what lossless sampling needs, verify.py) and
    a path accepted through either the draft's nodes or the chain's is the longest of both.
    Rows add different numbers of nodes; a row short of the most any row adds takes the
    difference as leaves under its root, each a token none of the root's children holds.
    Returns `tree` itself when no row adds a node."""
    tokens, parents, depths = tree.tokens.tolist(), tree.parents.tolist(), tree.depths.tolist()
    added = []
    for r, chain in enumerate(chains):
        child = {(p, t): i for i, (p, t) in enumerate(zip(parents[r], tokens[r])) if p >= 0}
        node, new = 0, 0
        for token in chain[:length]:
            if (node, token) not in child:
                child[node, token] = len(tokens[r])
                tokens[r].append(token)
                parents[r].append(node)
                depths[r].append(depths[r][node] + 1)
                new += 1
            node = child[node, token]
        added.append((new, child))
    most = max(new for new, _ in added)
    if most == 0:
        return tree
    for r, (new, child) in enumerate(added):
        taken = {t for (p, t) in child if p == 0}
        spare = (t for t in range(len(taken) + most) if t not in taken)
        for token in [next(spare) for _ in range(most - new)]:
            tokens[r].append(token)
            parents[r].append(0)
            depths[r].append(1)
    device = tree.tokens.device
    parents_t = torch.tensor(parents, device=device)  # [b, n + most]
    depths_t = torch.tensor(depths, device=device)
    return Tree(torch.tensor(tokens, device=device), parents_t, depths_t, ancestor_mask(parents_t, int(depths_t.max())))
