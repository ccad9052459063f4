"""Throughput-optimal trees: what `top_k auto` runs at each batch size.

For batch size b, a tree (top_k k, depth D, total_tokens N; a chain is k = 1) runs steps of

    step(l) = V(l, N) + P(l, D + 1) + (D - 1) * L(l, k) + o_spec(l, D)

seconds while l rows are still decoding, and plain autoregressive decoding steps of
V(l, 1) + o_ar(l), where, all measured (roofline/tree_costs.py):
- V(l, n): one target forward over n tokens per row, the profile's verify latency curve;
- L(l, w): one draft forward over a tree level of w tokens per row. A step runs D - 1 levels
  of k frontier nodes;
- P(l, w): the draft reading the accepted path, D + 1 tokens per row (the decode pads every
  row's path to the tree's depth; its first 1 + a are kept);
- o_spec, o_ar: the rest of a step (tree bookkeeping, acceptance, cache commit, the loop);
and a = E[accepted draft tokens per step | k, D, N] from the draft's replay
(scylla_impl/calibration.py; the 1 is the target's bonus token).

A batch decodes until its slowest row is done, and a finished row leaves it (decode._leave).
Rows accept different amounts, so with speculation they finish apart and the last steps run
for few rows at close to the whole batch's cost. The replay gives, per prompt, the steps each
tree's decode takes for the sweep's new tokens; with b rows drawn from those prompts, the rows
still decoding after t steps number Binomial(b, P(a row needs more than t steps)), so

    E[seconds] = sum over t of E[step(rows still decoding at t)]
    tokens/s = b * E[tokens a row decodes] / E[seconds]

and `occupancy` says how much of b (1 + a) / step(b), the rate with every row busy, that keeps.
AR rows finish together (one token a step), unless EOS ends some early, which prices the same way.

With an M-token prompt-lookup chain grafted under each tree, a is the replay's count for the
tree and chain together, the verify is priced at V(l, N + M) (the chain's nodes that run
along the tree's own are not added twice, so that is the most it costs) and the path at
P(l, max(D, M) + 1).

How sure a choice is: `spread` prices runs of the sweep's own number of prompts, each drawn
with replacement from the replayed ones, and gives the 10/50/90% quantiles of their spec/AR
and tau (which prompts a run measures, not how noisy its timing is).

The policy is the argmax, "no speculation" included (returned as total_tokens 1) when no
tree beats AR. Nothing about top_k's dependence on b is put in: the paper's k*(b) falls
out of how V bends as tokens in flight grow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from math import comb

import numpy as np

Seconds = Callable[[int, float], float]  # (batch_size, tokens per row) -> seconds
NO_TREE = "AR (no tree pays)"  # how `top_k auto` names its choice of no speculation


def chain_label(lookup_tokens: int) -> str:
    """How a grafted prompt-lookup chain is named beside its tree (cells, auto's record, the report)."""
    return f" +lookup {lookup_tokens}" if lookup_tokens else ""


def tree_label(top_k, depth, total_tokens, lookup_tokens=0) -> str:
    """How a tree is named everywhere; the sizes may come as a table's floats."""
    if int(total_tokens) == 1:
        return NO_TREE
    return f"k={int(top_k)} d={int(depth)} n={int(total_tokens)}{chain_label(int(lookup_tokens))}"


@dataclass(frozen=True)
class TreeChoice:
    batch_size: int
    top_k: int  # 0 with no speculation
    depth: int  # 0 with no speculation
    total_tokens: int  # root included; 1 with no speculation
    accepted: float  # E[accepted draft tokens per step]
    step_s: float  # predicted seconds per step
    tokens_per_s: float  # predicted, all rows together
    lookup_tokens: int = 0  # the prompt-lookup chain priced under the tree (0 with no speculation)
    # tokens_per_s over b (1 + accepted) / step_s: the share of the all-rows-busy rate kept while
    # rows that finished early leave the batch (1 when they finish together)
    occupancy: float = 1.0

    @property
    def speculative(self) -> bool:
        return self.total_tokens > 1

    def label(self) -> str:
        return tree_label(self.top_k, self.depth, self.total_tokens, self.lookup_tokens)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class StepCosts:
    verify_s: Seconds  # V(b, n)
    draft_level_s: Seconds  # L(b, w)
    draft_path_s: Seconds  # P(b, w)
    overhead_ar_s: Callable[[int], float]  # o_ar(b)
    overhead_spec_s: Callable[[int, int], float]  # o_spec(b, D)


def row_steps(tokens: np.ndarray, moves: np.ndarray) -> np.ndarray:
    """[trees, m] E[verify steps] of row r, which decodes tokens[r] [m] tokens, each step moving
    g positions with the frequency moves[..., r, g] [trees, m, G] has on that prompt,
    independently of the last (a renewal process)."""
    q = moves / moves.sum(-1, keepdims=True)  # [trees, m, G]
    longest = int(tokens.max())
    expected = np.zeros(q.shape[:2] + (longest + 1,))  # [..., x]: E[steps to move x or more positions]
    for x in range(1, longest + 1):
        reach = min(x - 1, q.shape[-1] - 1)  # a move of x or more finishes: e(<= 0) = 0
        expected[..., x] = 1 + (q[..., 1:reach + 1] * expected[..., x - 1:x - reach - 1:-1]).sum(-1)
    return expected[:, np.arange(tokens.size), tokens.astype(int)]


def mean_steps(tokens: np.ndarray, moves: np.ndarray) -> np.ndarray:
    """[trees] E[verify steps a row needs], rows drawn at random from the m prompts of `row_steps`."""
    return row_steps(tokens, moves).mean(1)


def row_survival(tokens: np.ndarray, moves: np.ndarray) -> np.ndarray:
    """[m, S] P(row r, stepping as in `row_steps` with moves [m, G], needs more than s steps),
    s = 0, 1, ... until every row is done."""
    q = moves / moves.sum(-1, keepdims=True)  # [m, G]
    longest = int(tokens.max())
    below = np.arange(longest)[None, :] < tokens[:, None]  # [m, x]: x positions moved, not yet done
    mass = np.zeros((tokens.size, longest))
    mass[:, 0] = 1.0
    mass *= below
    survival = []
    while (left := mass.sum(1)).max() > 1e-12:
        survival.append(left)
        moved = np.zeros_like(mass)
        for g in range(1, min(q.shape[1], longest)):
            moved[:, g:] += mass[:, :-g] * q[:, g:g + 1]
        mass = moved * below
    return np.stack(survival, 1) if survival else np.zeros((tokens.size, 0))


def step_survival(tokens: np.ndarray, moves: np.ndarray) -> np.ndarray:
    """[s] P(a row drawn at random from the m prompts needs more than s steps)."""
    return row_survival(tokens, moves).mean(0)


def batch_seconds(step_costs: np.ndarray, survival: np.ndarray) -> float:
    """Expected seconds a batch takes to decode when a row needs more than s steps with
    probability survival[s] [S] and a step with n rows still decoding costs step_costs[n - 1]
    [b] (finished rows leave the batch)."""
    b = step_costs.size
    rows = np.arange(1, b + 1)
    binom = np.array([comb(b, n) for n in rows], dtype=float)
    p = survival[:, None]  # [S, 1]
    decoding = binom * p ** rows * (1 - p) ** (b - rows)  # [S, b]: P(n rows still decoding at step s)
    return float((decoding @ step_costs).sum())


def autoregressive(batch_size: int, costs: StepCosts, row_tokens: np.ndarray) -> TreeChoice:
    """AR at this batch size for rows decoding `row_tokens` [m] tokens each (one a step)."""
    return _exact(batch_size, 0, 0, 1, 0.0, _ar_step(costs, batch_size), _ar_moves(row_tokens.size), row_tokens, 0)


def _ar_moves(rows: int) -> np.ndarray:
    """[rows, 2] AR's moves: every step moves one position."""
    one = np.zeros((rows, 2))
    one[:, 1] = 1
    return one


def _ar_step(costs: StepCosts, b: int) -> np.ndarray:
    """[b] one AR step's seconds with 1..b rows decoding."""
    return _costs(lambda rows: costs.verify_s(rows, 1) + costs.overhead_ar_s(rows), b)


def _tree_step(costs: StepCosts, b: int, top_k: int, depth: int, total_tokens: int, lookup_tokens: int) -> np.ndarray:
    """[b] one step's seconds with 1..b rows decoding; the same whatever a step accepts (the
    draft reads the path padded to the tree's depth)."""
    path = max(depth, lookup_tokens) + 1
    return _costs(lambda rows: (costs.verify_s(rows, total_tokens + lookup_tokens) + costs.draft_path_s(rows, path)
                                + (depth - 1) * costs.draft_level_s(rows, top_k) + costs.overhead_spec_s(rows, depth)), b)


def _costs(step: Callable[[int], float], b: int) -> np.ndarray:
    return np.array([step(rows) for rows in range(1, b + 1)])


def price(batch_size: int, top_k: int, depth: int, total_tokens: int, moves: np.ndarray,
          row_tokens: np.ndarray, costs: StepCosts, lookup_tokens: int = 0) -> TreeChoice:
    """Predicted step time and tokens/s of one tree (and the chain grafted under it) at one batch
    size, for rows decoding `row_tokens` [m] tokens each with the tree's `moves` [m, G] per row."""
    accepted = float(row_tokens.mean() / mean_steps(row_tokens, moves[None])[0]) - 1
    step = _tree_step(costs, batch_size, top_k, depth, total_tokens, lookup_tokens)
    return _exact(batch_size, top_k, depth, total_tokens, accepted, step, moves, row_tokens, lookup_tokens)


SPREAD_QUANTILES = (0.1, 0.5, 0.9)


@dataclass(frozen=True)
class Spread:
    """What runs of `rows` prompts, drawn from those replayed, would measure for one tree: spec/AR
    and tau at SPREAD_QUANTILES over `draws` such runs. Prompt sampling only; timing noise adds to it."""
    rows: int
    draws: int
    speedup: tuple[float, ...]
    tau: tuple[float, ...]

    def to_json(self) -> dict:
        return {**asdict(self), "quantiles": list(SPREAD_QUANTILES)}

    @classmethod
    def from_json(cls, doc: dict) -> Spread:
        return cls(int(doc["rows"]), int(doc["draws"]), tuple(doc["speedup"]), tuple(doc["tau"]))


def spread(choice: TreeChoice, moves: np.ndarray, row_tokens: np.ndarray, costs: StepCosts, rows: int,
           draws: int = 200, seed: int = 0) -> Spread:
    """`choice`'s spec/AR and tau over `draws` runs of `rows` prompts drawn with replacement from
    the replayed ones (`moves` [m, G], `row_tokens` [m] as in `price`), each run priced as `price`
    prices it: E[steps] and survival are means over a run's rows, so each row's are found once,
    and a step's price does not depend on what it accepts, so the tree's and AR's are found once."""
    b = choice.batch_size
    steps = row_steps(row_tokens, moves[None])[0]  # [m]
    alive = row_survival(row_tokens, moves)  # [m, S]
    ar_alive = row_survival(row_tokens, _ar_moves(row_tokens.size))  # [m, T]
    step = _tree_step(costs, b, choice.top_k, choice.depth, choice.total_tokens, choice.lookup_tokens)  # [b]
    ar_step = _ar_step(costs, b)  # [b]
    picks = np.random.default_rng(seed).integers(row_tokens.size, size=(draws, rows))  # [draws, rows] prompt indices
    # A run of prompts that all end at EOS on their first token measures no step.
    runs = [run for run in picks if row_tokens[run].sum() > 0] or [np.arange(row_tokens.size)]
    speedup, tau = [], []
    for run in runs:
        accepted = float(row_tokens[run].mean() / steps[run].mean()) - 1
        # the run's tokens are the same both ways: spec/AR is AR's seconds over the tree's
        speedup.append(batch_seconds(ar_step, ar_alive[run].mean(0)) / batch_seconds(step, alive[run].mean(0)))
        tau.append(1 + accepted)
    return Spread(rows, draws, tuple(np.quantile(speedup, SPREAD_QUANTILES).tolist()),
                  tuple(np.quantile(tau, SPREAD_QUANTILES).tolist()))


def _exact(b: int, top_k: int, depth: int, total_tokens: int, accepted: float, step: np.ndarray,
           moves: np.ndarray, row_tokens: np.ndarray, lookup_tokens: int) -> TreeChoice:
    tokens_per_s = b * float(row_tokens.mean()) / batch_seconds(step, step_survival(row_tokens, moves))
    busy = b * (1 + accepted) / step[-1]  # every row decoding, every step
    return TreeChoice(b, top_k, depth, total_tokens, accepted, float(step[-1]), tokens_per_s, lookup_tokens,
                      tokens_per_s / busy)


def ranked(batch_size: int, trees: list[tuple[int, int, int, np.ndarray]], costs: StepCosts,
           row_tokens: np.ndarray, lookup_tokens: int = 0, keep: int = 12) -> list[TreeChoice]:
    """AR and the `keep` fastest trees (k, D, N, moves [m, G]), best first, for rows decoding
    `row_tokens` [m] tokens each; ties go to the smaller tree.

    The rows decode for E[steps] x b row-steps in all, none cheaper than the cheapest step per
    row, so E[tokens] / (E[steps] x min over n of step(n) / n) bounds a tree's rate from above
    (b (1 + a) / step(b), all rows busy, where batching never makes a row dearer). Trees are
    priced exactly in the order of that bound until it falls below the `keep`-th best rate."""
    b = batch_size
    if not trees:
        return [autoregressive(b, costs, row_tokens)]
    widest = max(moves.shape[-1] for *_, moves in trees)
    steps = mean_steps(row_tokens, np.stack([np.pad(moves, ((0, 0), (0, widest - moves.shape[-1])))
                                             for *_, moves in trees]))  # [trees]
    accepted = row_tokens.mean() / steps - 1
    per_row = np.arange(1, b + 1)
    bounds = []
    for (k, d, n, moves), a, s in zip(trees, accepted, steps):
        step = _tree_step(costs, b, k, d, n, lookup_tokens)
        bounds.append((row_tokens.mean() / (s * (step / per_row).min()), (k, d, n, moves, float(a), step)))
    bounds.sort(key=lambda bound: (-bound[0], bound[1][2], bound[1][1], bound[1][0]))
    options = [autoregressive(b, costs, row_tokens)]
    for bound, (k, d, n, moves, a, step) in bounds:
        best = sorted((o.tokens_per_s for o in options), reverse=True)
        if len(best) >= keep and best[keep - 1] >= bound:
            break
        options.append(_exact(b, k, d, n, a, step, moves, row_tokens, lookup_tokens))
    return sorted(options, key=lambda c: (-c.tokens_per_s, c.total_tokens, c.depth, c.top_k))


def choose(batch_size: int, trees: list[tuple[int, int, int, np.ndarray]], costs: StepCosts,
           row_tokens: np.ndarray) -> TreeChoice:
    """The throughput-optimal tree at this batch size, or AR (total_tokens 1) if none pays."""
    return ranked(batch_size, trees, costs, row_tokens, keep=1)[0]
