"""How many draft tokens the target accepts from each tree shape, measured by replay.

At temperature 0 the target's continuation of a prompt is fixed, so what a tree gets
accepted at any point is the longest path of the tree that spells the next tokens of
that continuation. Replay, per batch of held-out prompts:

1. decode the prompts autoregressively once: the reference continuation;
2. run the target once over prompt + reference, for the features the draft reads;
3. at every position, feed the draft exactly what decoding would have fed it (pair t is
   (token t+1, feature t)), grow the widest pool for each top_k (`tree.grow_pool`), and
   find the reference path in it: the node at depth j whose token is the j-th next
   reference token and whose parent is the node found at depth j-1;
4. for every (depth D, total_tokens N): the tree keeps the pool's first N-1 entries in
   `tree.keep_order` among its first D levels, and the path's nodes rank in increasing
   order along it (a child never scores above its parent), so the accepted count is the
   number of path nodes within depth D that rank below N-1.

That count equals what speculative decoding accepts from the same state (the tests check
it step by step against `decode.generate`). One replay prices every tree of every top_k at
once. What it averages is what a decode averages: per step, not per position. A step that
accepts a tokens moves the decode a + 1 positions on, so it lands on few positions of a span
the draft predicts well (a copied passage) and on every position of a span it misses; the
mean over all positions overstates tau (prompt lookup's by up to 1 token a step on code).
So for each tree the replay follows that tree's own decode through the continuation, from
the first position on, and averages over the positions it lands on: exactly the decode's
accepted tokens per step. Sampled decoding (T > 0) accepts more than this greedy count from
flat targets and less from peaked ones; the table is the greedy one.

The table also keeps, per replayed prompt, where each tree's decode stepped from. A batch runs
until its slowest row is done, so its cost depends on how far apart the rows' step counts are,
not on their mean alone: what each step moved (1 + accepted) on each prompt, counted over the
steps a decode of the sweep's own new tokens takes (copying grows as a generation goes on), is
what roofline/tree_policy.py prices that from.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from scylla_impl.decode import generate
from scylla_impl.decode_config import DecodeConfig
from scylla_impl.ngrams import MAX_NGRAM, lookup
from scylla_impl.tree import Pool, grow_pool, keep_order
from scylla_impl.tree_shape import pool_size
from workloads.errors import ScyllaError

TOP_KS = (1, 2, 3, 4, 6, 8, 10)  # EAGLE-2's default top_k (10) is the widest priced
MAX_DEPTH = 8
MAX_TREE_TOKENS = 128  # trees past this never paid on the devices measured; raise it here


def tokens_cap(top_k: int, depth: int) -> int:
    """Largest total_tokens (root included) priced for a (top_k, depth): the pool, capped."""
    return min(pool_size(top_k, depth) + 1, MAX_TREE_TOKENS)


@dataclass
class ReplayedRow:
    """One replayed prompt: how its reference decode ended, and where each tree's decode stepped from."""

    decoded: int  # tokens the reference decode emitted after c_0 (the prefill's token)
    stopped: bool  # it stopped at EOS, before the replay's new tokens ran out
    # (top_k, depth) -> [cap-1, span] bool: True at (N-2, p) where the decode of the tree keeping
    # N tokens steps from root c_p; span is the roots replayed (max(0, len(continuation) - max_depth))
    stepped: dict[tuple[int, int], np.ndarray]

    @property
    def span(self) -> int:
        return next(iter(self.stepped.values())).shape[1]

    def need(self, max_new_tokens: int) -> int:
        """Tokens this prompt's decode of max_new_tokens emits after the prefill's first one."""
        return min(max_new_tokens - 1, self.decoded) if self.stopped else max_new_tokens - 1

    def moves(self, top_k: int, depth: int, need: int, longest: int) -> np.ndarray:
        """[cap-1, longest + 1] per tree of (top_k, depth), how many of its decode's steps moved
        1, 2, ... positions (1 + accepted) on this prompt, over the steps it takes from roots
        before c_need (all replayed ones past the span). A step whose landing lies past the span
        is not known and not counted; a tree with none counted moves one position a step."""
        bits = self.stepped[(top_k, depth)]  # [cap-1, span]
        counts = np.zeros((bits.shape[0], longest + 1))
        for n, row in enumerate(bits):
            roots = np.flatnonzero(row)
            moved = np.diff(roots)[roots[:-1] < need]
            counts[n] = np.bincount(moved, minlength=longest + 1)[:longest + 1]
        counts[counts.sum(1) == 0, 1] = 1
        return counts

    def to_json(self, keys) -> dict:
        bits = np.concatenate([self.stepped[key] for key in keys])  # [trees, span]
        packed = zlib.compress(np.packbits(bits).tobytes())
        return {"decoded": self.decoded, "stopped": self.stopped, "span": self.span,
                "stepped": base64.b64encode(packed).decode()}

    @classmethod
    def from_json(cls, doc: dict, shapes: dict[tuple[int, int], int]) -> ReplayedRow:
        span = int(doc["span"])
        count = sum(shapes.values()) * span
        bits = np.unpackbits(np.frombuffer(zlib.decompress(base64.b64decode(doc["stepped"])), np.uint8), count=count)
        bits = bits.astype(bool).reshape(-1, span)
        stepped, at = {}, 0
        for key, trees in shapes.items():
            stepped[key], at = bits[at:at + trees], at + trees
        return cls(int(doc["decoded"]), bool(doc["stopped"]), stepped)


@dataclass
class AcceptanceTable:
    """E[accepted draft tokens per decoding step | top_k, depth, total_tokens] at temperature 0."""

    top_ks: tuple[int, ...]
    max_depth: int
    positions: int = 0  # replayed (prompt, position) pairs
    lookup_tokens: int = 0  # the prompt-lookup chain grafted under every tree (0: none)
    # (top_k, depth) -> one entry per total_tokens 2..cap: accepted tokens summed over the steps
    # that tree's decode takes, and the number of those steps
    sums: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    steps: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    rows: list[ReplayedRow] = field(default_factory=list)  # per replayed prompt, in replay order

    def __post_init__(self) -> None:
        for k in self.top_ks:
            for d in range(1, self.max_depth + 1):
                self.sums.setdefault((k, d), np.zeros(tokens_cap(k, d) - 1))
                self.steps.setdefault((k, d), np.zeros(tokens_cap(k, d) - 1))

    def mean_accepted(self, top_k: int, depth: int, total_tokens: int) -> float:
        if self.positions == 0:
            raise ScyllaError("the acceptance table is empty: no position was replayed")
        sums = self.sums.get((top_k, depth))
        if sums is None or not 2 <= total_tokens <= sums.size + 1:
            raise KeyError(f"no replayed acceptance for top_k {top_k}, depth {depth}, total_tokens {total_tokens}")
        return float(sums[total_tokens - 2] / self.steps[(top_k, depth)][total_tokens - 2])

    def decodes(self, max_new_tokens: int) -> tuple[np.ndarray, list[tuple[int, int, int, np.ndarray]]]:
        """Decodes of max_new_tokens of the replayed prompts: ([rows] tokens each emits after the
        prefill's first one, fewer where it stops at EOS; every priced tree as (top_k, depth,
        total_tokens, [rows, moves] how many of its steps moved 1, 2, ... positions on each
        prompt, see ReplayedRow.moves))."""
        if not self.rows:
            raise ScyllaError("the acceptance table has no replayed prompt")
        if max_new_tokens < 2:
            raise ScyllaError(f"a decode of {max_new_tokens} new token(s) takes no verify step to price")
        need = [row.need(max_new_tokens) for row in self.rows]
        if not any(need):
            raise ScyllaError("every replayed prompt's reference ended at EOS on its first token: no step to price")
        longest = max(self.max_depth, self.lookup_tokens) + 1  # a step moves at most this far
        trees = []
        for k, d in self.sums:
            moves = np.stack([row.moves(k, d, n, longest) for row, n in zip(self.rows, need)], 1)  # [cap-1, rows, .]
            trees += [(k, d, n, moves[n - 2]) for n in range(2, moves.shape[0] + 2)]
        return np.array(need, dtype=float), trees

    def trees(self):
        """Every priced (top_k, depth, total_tokens)."""
        for (k, d), sums in self.sums.items():
            for n in range(2, sums.size + 2):
                yield k, d, n

    @classmethod
    def pooled(cls, tables: Sequence[AcceptanceTable]) -> AcceptanceTable:
        """One table over the steps of all of `tables` (replays of the same draft on other prompts)."""
        first = tables[0]
        total = cls(first.top_ks, first.max_depth, sum(t.positions for t in tables), first.lookup_tokens)
        for t in tables:
            if (t.top_ks, t.max_depth, t.lookup_tokens) != (first.top_ks, first.max_depth, first.lookup_tokens):
                raise ScyllaError("acceptance tables of different trees cannot be pooled")
            for key in t.sums:
                total.sums[key] += t.sums[key]
                total.steps[key] += t.steps[key]
            total.rows += t.rows
        return total

    def to_json(self) -> dict:
        return {"top_ks": list(self.top_ks), "max_depth": self.max_depth, "positions": self.positions,
                "lookup_tokens": self.lookup_tokens,
                "mean_accepted": {f"{k},{d}": (s / np.maximum(self.steps[(k, d)], 1)).round(6).tolist()
                                  for (k, d), s in self.sums.items()},
                "steps": {f"{k},{d}": s.astype(int).tolist() for (k, d), s in self.steps.items()},
                "rows": [row.to_json(list(self.sums)) for row in self.rows],
                "definition": "mean accepted draft tokens per decoding step at temperature 0 (the bonus token "
                              "not counted), over the steps each tree's own decode takes through the replayed "
                              "continuations; list index i is total_tokens i + 2 (root included); with "
                              "lookup_tokens M > 0, each tree has an M-token prompt-lookup chain grafted under it; "
                              "rows: per replayed prompt, the bits (trees in mean_accepted's order, then root "
                              "position) of where each tree's decode stepped from, packed, zlib, base64"}

    @classmethod
    def from_json(cls, doc: dict) -> AcceptanceTable:
        try:
            table = cls(tuple(int(k) for k in doc["top_ks"]), int(doc["max_depth"]), int(doc["positions"]),
                        int(doc.get("lookup_tokens", 0)))
            for key, means in doc["mean_accepted"].items():
                k, d = (int(x) for x in key.split(","))
                table.steps[(k, d)] = np.asarray(doc["steps"][key], dtype=float)
                table.sums[(k, d)] = np.asarray(means, dtype=float) * table.steps[(k, d)]
            shapes = {key: sums.size for key, sums in table.sums.items()}
            table.rows = [ReplayedRow.from_json(row, shapes) for row in doc["rows"]]
        except (KeyError, TypeError, ValueError, AttributeError, zlib.error) as err:
            raise ScyllaError(f"not an acceptance table ({type(err).__name__}: {err})") from None
        return table


def path_in_pool(pool: Pool, reference: torch.Tensor) -> torch.Tensor:
    """[b, D] pool index of the reference path's node at each depth, -1 past where it leaves the pool.

    reference [b, D]: the next D target tokens after the root."""
    b, depth = reference.shape
    k = pool.top_k
    found = torch.full((b, depth), -1, dtype=torch.long, device=reference.device)
    parent = torch.full((b,), -1, dtype=torch.long, device=reference.device)
    for j in range(depth):
        start = 0 if j == 0 else k + (j - 1) * k * k
        end = k + j * k * k
        if end > pool.tokens.shape[1]:
            break
        hit = (pool.tokens[:, start:end] == reference[:, j:j + 1]) & (pool.parents[:, start:end] == parent[:, None])
        # At most one hit (siblings differ); none below a missing parent (-1 is no deeper node's parent).
        idx = torch.where(hit.any(1), start + hit.int().argmax(1), -1)
        found[:, j] = idx
        parent = idx
    return found


def accepted_by_tree(pool: Pool, path: torch.Tensor, depth: int) -> torch.Tensor:
    """[b, N-1 options] accepted draft tokens for trees of depth `depth` keeping 1..cap-1 nodes."""
    b = path.shape[0]
    k = pool.top_k
    size = pool_size(k, depth)  # pool order is level order: depth D is a prefix of the pool
    scores = pool.scores[:, :size]
    order = keep_order(scores)  # [b, size]
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(size, device=order.device).expand(b, size))
    on_path = path[:, :depth]  # [b, depth]
    exists = on_path >= 0
    path_rank = torch.where(exists, rank.gather(1, on_path.clamp(min=0)), size)  # [b, depth]
    keep = torch.arange(1, tokens_cap(k, depth), device=order.device)  # nodes kept: N - 1
    return (path_rank[:, :, None] < keep[None, None, :]).sum(1)  # [b, cap-1]


def _chain_matches(seqs: list[list[int]], roots: list[int], length: int, device) -> torch.Tensor:
    """[b, 1] how many tokens of each row's lookup chain at its root (seqs[r][roots[r]]) the
    reference continues with: the chain's own accepted path."""
    matched = []
    for seq, root in zip(seqs, roots):
        proposal = lookup(seq[:root + 1], MAX_NGRAM, length)
        follows = seq[root + 1:root + 1 + len(proposal)]
        matched.append(next((j for j, (a, b) in enumerate(zip(proposal, follows)) if a != b), len(follows)))
    return torch.tensor(matched, device=device)[:, None]


def replay(target, draft, prompts: Sequence[list[int]], *, new_tokens: int = 64, batch_size: int = 8,
           top_ks: Sequence[int] = TOP_KS, max_depth: int = MAX_DEPTH, lookup_tokens: int = 0,
           on_batch: Callable[[int, int], None] | None = None,
           on_position: Callable[[int, int, dict[tuple[int, int], torch.Tensor]], None] | None = None
           ) -> AcceptanceTable:
    """The acceptance table of `draft` on `target` over `prompts` (token ids); see the module docstring.

    on_position(prompt index, root index in its continuation, {(k, D): accepted [cap-1]}) sees
    each replayed position (tests compare it with decoding)."""
    return replay_groups(target, draft, {None: prompts}, new_tokens=new_tokens, batch_size=batch_size,
                         top_ks=top_ks, max_depth=max_depth, lookup_tokens=lookup_tokens, on_batch=on_batch,
                         on_position=on_position)[None]


def replay_groups(target, draft, groups: Mapping[Hashable, Sequence[list[int]]], *, new_tokens: int = 64,
                  batch_size: int = 8, top_ks: Sequence[int] = TOP_KS, max_depth: int = MAX_DEPTH,
                  lookup_tokens: int = 0, on_batch: Callable[[int, int], None] | None = None,
                  on_position: Callable[[int, int, dict[tuple[int, int], torch.Tensor]], None] | None = None
                  ) -> dict[Hashable, AcceptanceTable]:
    """One acceptance table per group of prompts (a dataset's), from one replay batched across
    groups; `AcceptanceTable.pooled` of them is the table of all the prompts. Prompt indices
    given to `on_position` run over the groups in order."""
    top_ks = tuple(k for k in top_ks if k <= draft.draft_vocab)
    if not top_ks:
        raise ScyllaError(f"no top_k fits the draft's vocabulary of {draft.draft_vocab} tokens")
    if new_tokens <= max_depth:
        raise ScyllaError(f"replay needs more new tokens ({new_tokens}) than the deepest tree ({max_depth})")
    if lookup_tokens < 0:
        raise ScyllaError(f"lookup_tokens must be >= 0, got {lookup_tokens}")
    tables = {name: AcceptanceTable(top_ks, max_depth, lookup_tokens=lookup_tokens) for name in groups}
    prompts = [list(p) for ps in groups.values() for p in ps]
    owners = [tables[name] for name, ps in groups.items() for _ in ps]  # each prompt's table
    layers = tuple(draft.feature_layers)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        ref = generate(target, chunk, None, DecodeConfig(max_new_tokens=new_tokens)).token_ids
        _replay_batch(target, draft, chunk, ref, layers, owners[start:start + batch_size], max_depth, start,
                      on_position, lookup_tokens)
        if on_batch is not None:
            on_batch(min(start + batch_size, len(prompts)), len(prompts))
    return tables


@torch.inference_mode()  # as decode.generate runs
def _replay_batch(target, draft, prompts, continuations, layers, tables, max_depth, first, on_position,
                  lookup_tokens: int = 0) -> None:
    steps = max(max(len(c) for c in continuations) - max_depth, 0)  # root c_i needs c_{i+1..i+D}
    # Per tree, [b, cap-1, steps]: where each row's decode of that tree steps from (ReplayedRow).
    stepped = {(k, d): np.zeros((len(prompts), tokens_cap(k, d) - 1, steps), dtype=bool)
               for k in tables[0].top_ks for d in range(1, max_depth + 1)}
    if steps:
        _follow_decodes(target, draft, prompts, continuations, layers, tables, stepped, max_depth, first,
                        on_position, lookup_tokens)
    for r, c in enumerate(continuations):
        span = max(len(c) - max_depth, 0)
        tables[r].rows.append(ReplayedRow(len(c) - 1, c[-1] in target.eos_ids,
                                          {key: bits[r, :, :span] for key, bits in stepped.items()}))


def _follow_decodes(target, draft, prompts, continuations, layers, tables, stepped, max_depth, first, on_position,
                    lookup_tokens) -> None:
    device, b = target.device, len(prompts)
    seqs = [p + c for p, c in zip(prompts, continuations)]
    cache = target.new_cache(b, max(map(len, seqs)) + 8)
    out = target.prefill(cache, seqs, layers)
    feats = out.layer_inputs if layers else out.hidden  # [b, L, f] every position of prompt + reference
    del cache
    lengths = [len(p) for p in prompts]
    steps = next(iter(stepped.values())).shape[2]
    longest = max(lengths)
    draft.start(prompts, longest + steps + max_depth + 8)
    pair_tokens = torch.tensor([p[1:] + [c[0]] + [0] * (longest - len(p)) for p, c in zip(prompts, continuations)],
                               device=device)
    pair_feats = torch.stack([torch.nn.functional.pad(feats[r, :lengths[r]], (0, 0, 0, longest - lengths[r]))
                              for r in range(b)])
    root_logprobs, root_out = draft.extend(pair_tokens, pair_feats, torch.tensor(lengths, device=device))
    # A root's reference runs max_depth past it, and roots go up to the longest continuation
    # from every prompt's end: the longest prompt need not own the longest continuation.
    width = longest + max(len(c) for c in continuations) + max_depth
    padded = torch.tensor([s + [-1] * (width - len(s)) for s in seqs], device=device)  # -1 never matches a token
    rows = torch.arange(b, device=device)
    # Per tree, the continuation index its decode steps from next: every decode starts at c_0.
    landing = {key: torch.zeros(bits.shape[:2], dtype=torch.long, device=device) for key, bits in stepped.items()}
    for i in range(steps):
        valid = torch.tensor([i + max_depth < len(c) for c in continuations], device=device)
        root_at = torch.tensor(lengths, device=device) + i  # sequence index of root c_i
        reference = padded[rows[:, None], root_at[:, None] + 1 + torch.arange(max_depth, device=device)]
        chained = _chain_matches(seqs, root_at.tolist(), lookup_tokens, device) if lookup_tokens else None  # [b, 1]
        found = {}
        for k in tables[0].top_ks:
            pool = grow_pool(draft, root_logprobs, root_out, k, max_depth)
            path = path_in_pool(pool, reference)
            for d in range(1, max_depth + 1):
                accepted = accepted_by_tree(pool, path, d)  # [b, cap-1]
                if chained is not None:  # the verified trie holds both paths: the longer is accepted
                    accepted = torch.maximum(accepted, chained)
                landed = (landing[(k, d)] == i) & valid[:, None]  # [b, cap-1]: that tree's decode steps from c_i
                landing[(k, d)] = torch.where(landed, i + accepted + 1, landing[(k, d)])
                here = stepped[(k, d)][:, :, i]  # [b, cap-1]
                here[:] = landed.cpu().numpy()
                summed = (accepted * landed).cpu().numpy()
                for r in range(b):
                    tables[r].sums[(k, d)] += summed[r]
                    tables[r].steps[(k, d)] += here[r]
                found[(k, d)] = accepted
        for r in valid.nonzero().flatten().tolist():
            tables[r].positions += 1
        if on_position is not None:
            for r in range(b):
                if valid[r]:
                    on_position(first + r, i, {key: acc[r] for key, acc in found.items()})
        if not bool(valid.any()):
            break
        # One more pair per row: (token c_{i+1}, feature of c_i), as decoding extends after a step.
        next_tokens = padded[rows, root_at + 1].clamp(min=0)[:, None]
        next_feats = feats[rows, root_at.clamp(max=feats.shape[1] - 1)][:, None]
        root_logprobs, root_out = draft.extend(next_tokens, next_feats, torch.ones(b, dtype=torch.long, device=device))
