"""Throughput-optimal trees: what `top_k auto` runs at each batch size.

For batch size b, every priced tree (top_k k, depth D, total_tokens N; a chain is k = 1)
is worth

    tokens/s = b * (1 + a) / (V(b, N) + L(b, 1 + a) + (D - 1) * L(b, k) + o_spec(b))

and plain autoregressive decoding b / (V(b, 1) + o_ar(b)), where, all measured:
- a = E[accepted draft tokens per step | k, D, N] from the draft's replay
  (scylla_impl/calibration.py; the 1 is the target's bonus token);
- V(b, n): one target forward over n tokens per row, the profile's verify latency curve;
- L(b, w): one draft forward over w tokens per row. A step runs D - 1 tree levels of k
  frontier nodes, and one `extend` over the 1 + a tokens the step accepted;
- o_spec, o_ar: the rest of a step (tree bookkeeping, acceptance, cache commit).

With an M-token prompt-lookup chain grafted under each tree, a is the replay's count for the
tree and chain together, and the verify is priced at V(b, N + M): the chain's nodes that run
along the tree's own are not added twice, so that is the most it costs.

The policy is the argmax, "no speculation" included (returned as total_tokens 1) when no
tree beats AR. Nothing about top_k's dependence on b is put in: the paper's k*(b) falls
out of how V bends as tokens in flight grow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

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


def autoregressive(batch_size: int, costs: StepCosts) -> TreeChoice:
    step = costs.verify_s(batch_size, 1) + costs.overhead_ar_s(batch_size)
    return TreeChoice(batch_size, 0, 0, 1, 0.0, step, batch_size / step)


def price(batch_size: int, top_k: int, depth: int, total_tokens: int, accepted: float,
          costs: StepCosts, lookup_tokens: int = 0) -> TreeChoice:
    """Predicted step time and tokens/s of one tree (and the chain grafted under it) at one batch size."""
    b = batch_size
    step = (costs.verify_s(b, total_tokens + lookup_tokens) + costs.draft_level_s(b, 1 + accepted)
            + (depth - 1) * costs.draft_level_s(b, top_k) + costs.overhead_spec_s(b))
    return TreeChoice(b, top_k, depth, total_tokens, accepted, step, b * (1 + accepted) / step, lookup_tokens)


def ranked(batch_size: int, trees: Iterable[tuple[int, int, int, float]], costs: StepCosts,
           lookup_tokens: int = 0) -> list[TreeChoice]:
    """Every tree (k, D, N, E[accepted]) and AR, best first; ties go to the smaller tree."""
    options = [autoregressive(batch_size, costs)]
    options += [price(batch_size, k, d, n, a, costs, lookup_tokens) for k, d, n, a in trees]
    return sorted(options, key=lambda c: (-c.tokens_per_s, c.total_tokens, c.depth, c.top_k))


def choose(batch_size: int, trees: Iterable[tuple[int, int, int, float]], costs: StepCosts) -> TreeChoice:
    """The throughput-optimal tree at this batch size, or AR (total_tokens 1) if none pays."""
    return ranked(batch_size, trees, costs)[0]
