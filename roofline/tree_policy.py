"""Throughput-optimal trees: what `top_k auto` runs at each batch size.

For batch size b, a tree (top_k k, depth D, total_tokens N; a chain is k = 1) runs steps of

    step(l) = V(l, N) + L(l, 1 + a) + (D - 1) * L(l, k) + o_spec(l)

seconds while l rows are still decoding, and plain autoregressive decoding steps of
V(l, 1) + o_ar(l), where, all measured:
- a = E[accepted draft tokens per step | k, D, N] from the draft's replay
  (scylla_impl/calibration.py; the 1 is the target's bonus token);
- V(l, n): one target forward over n tokens per row, the profile's verify latency curve;
- L(l, w): one draft forward over w tokens per row. A step runs D - 1 tree levels of k
  frontier nodes, and one `extend` over the 1 + a tokens the step accepted;
- o_spec, o_ar: the rest of a step (tree bookkeeping, acceptance, cache commit).

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
tree and chain together, and the verify is priced at V(l, N + M): the chain's nodes that run
along the tree's own are not added twice, so that is the most it costs.

The policy is the argmax, "no speculation" included (returned as total_tokens 1) when no
tree beats AR. Nothing about top_k's dependence on b is put in: the paper's k*(b) falls
out of how V bends as tokens in flight grow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from math import comb

import numpy as np

Seconds = Callable[[int, float], float]  # (batch_size, tokens per row) -> seconds


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
        if not self.speculative:
            return "AR (no tree pays)"
        chain = f" +lookup {self.lookup_tokens}" if self.lookup_tokens else ""
        return f"k={self.top_k} d={self.depth} n={self.total_tokens}{chain}"

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class StepCosts:
    verify_s: Seconds  # V(b, n)
    draft_level_s: Seconds  # L(b, w)
    overhead_ar_s: Callable[[int], float]  # o_ar(b)
    overhead_spec_s: Callable[[int], float]  # o_spec(b)


def batch_seconds(step_s: Callable[[int], float], row_steps: np.ndarray, batch_size: int) -> float:
    """Expected seconds a batch of `batch_size` rows takes to decode, each row drawn at random from
    rows needing `row_steps` [m] steps, a step costing step_s(rows still decoding)."""
    b, m = batch_size, row_steps.size
    cost = np.array([step_s(rows) for rows in range(1, b + 1)])  # [b]
    total, done = 0.0, 0.0
    for i, needed in enumerate(np.sort(row_steps)):
        if needed > done:  # steps (done, needed]: a row is still decoding with probability (m - i) / m
            p = (m - i) / m
            rows = np.array([comb(b, n) * p ** n * (1 - p) ** (b - n) for n in range(1, b + 1)])  # [b] P(n decoding)
            total += (needed - done) * float(rows @ cost)
            done = needed
    return total


def autoregressive(batch_size: int, costs: StepCosts, row_tokens: np.ndarray) -> TreeChoice:
    """AR at this batch size for rows decoding `row_tokens` [m] tokens each (one a step)."""
    def step(rows: int) -> float:
        return costs.verify_s(rows, 1) + costs.overhead_ar_s(rows)

    return _choice(batch_size, 0, 0, 1, 0.0, step, row_tokens, row_tokens, 0)


def price(batch_size: int, top_k: int, depth: int, total_tokens: int, row_steps: np.ndarray,
          row_tokens: np.ndarray, costs: StepCosts, lookup_tokens: int = 0) -> TreeChoice:
    """Predicted step time and tokens/s of one tree (and the chain grafted under it) at one batch
    size, for rows decoding `row_tokens` [m] tokens each in `row_steps` [m] steps of this tree."""
    accepted = float(row_tokens.sum() / row_steps.sum()) - 1  # per step, the bonus token not counted

    def step(rows: int) -> float:
        return (costs.verify_s(rows, total_tokens + lookup_tokens) + costs.draft_level_s(rows, 1 + accepted)
                + (depth - 1) * costs.draft_level_s(rows, top_k) + costs.overhead_spec_s(rows))

    return _choice(batch_size, top_k, depth, total_tokens, accepted, step, row_steps, row_tokens, lookup_tokens)


def _choice(b: int, top_k: int, depth: int, total_tokens: int, accepted: float, step: Callable[[int], float],
            row_steps: np.ndarray, row_tokens: np.ndarray, lookup_tokens: int) -> TreeChoice:
    tokens_per_s = b * float(row_tokens.mean()) / batch_seconds(step, row_steps, b)
    busy = b * (1 + accepted) / step(b)
    return TreeChoice(b, top_k, depth, total_tokens, accepted, step(b), tokens_per_s, lookup_tokens,
                      tokens_per_s / busy)


def ranked(batch_size: int, trees: Iterable[tuple[int, int, int, np.ndarray]], costs: StepCosts,
           row_tokens: np.ndarray, lookup_tokens: int = 0) -> list[TreeChoice]:
    """Every tree (k, D, N, [m] steps per row) and AR, best first, for rows decoding `row_tokens`
    [m] tokens each; ties go to the smaller tree."""
    options = [autoregressive(batch_size, costs, row_tokens)]
    options += [price(batch_size, k, d, n, steps, row_tokens, costs, lookup_tokens) for k, d, n, steps in trees]
    return sorted(options, key=lambda c: (-c.tokens_per_s, c.total_tokens, c.depth, c.top_k))


def choose(batch_size: int, trees: Iterable[tuple[int, int, int, np.ndarray]], costs: StepCosts,
           row_tokens: np.ndarray) -> TreeChoice:
    """The throughput-optimal tree at this batch size, or AR (total_tokens 1) if none pays."""
    return ranked(batch_size, trees, costs, row_tokens)[0]
