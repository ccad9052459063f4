"""The throughput-optimal tree policy on synthetic cost curves and acceptance tables:
it picks the known best tree, falls back to AR when nothing pays, and its tree shrinks as
the batch grows when verification turns compute-bound (Theorem 1.3)."""

import math

import pytest

from roofline.latency_curve import LatencyCurve, non_decreasing
from roofline.tree_policy import StepCosts, choose, price, ranked


def roofline_curve(t0: float, knee: float, per_token: float):
    """V(b, n) = t0 + per_token * max(0, b*n - knee): flat, then compute-bound."""
    return lambda b, n: t0 + per_token * max(0.0, b * n - knee)


def costs(verify, level_s: float = 0.0, overhead_s: float = 0.0) -> StepCosts:
    return StepCosts(verify, lambda b, w: level_s, lambda b: overhead_s, lambda b: overhead_s)


def geometric_trees(alpha_of_k=lambda k: 1 - 0.5 / math.sqrt(k), top_ks=(1, 2, 4, 8), depths=range(1, 7),
                    max_tokens=96):
    """A tree of top_k k accepts each further level with probability alpha(k), if it has room for it:
    E[a] = sum over levels j <= min(D, (N-1)//k) of alpha^j."""
    for k in top_ks:
        for d in depths:
            for n in range(2, max_tokens + 1):
                levels = min(d, (n - 1) // k)
                yield k, d, n, sum(alpha_of_k(k) ** j for j in range(1, levels + 1))


def test_picks_the_known_best_tree():
    # Verification is free up to 8 tokens per row and costly past it; drafting is free.
    trees = [(1, 3, 4, 1.5), (2, 3, 7, 2.0), (4, 4, 9, 2.6), (4, 6, 20, 3.0)]
    best = choose(1, trees, costs(roofline_curve(0.01, 8, 0.01)))
    assert (best.top_k, best.depth, best.total_tokens) == (2, 3, 7)  # 3 tokens in 10 ms beats 3.6 in 20 ms
    assert best.tokens_per_s == pytest.approx(3.0 / 0.01)
    by_hand = [price(1, *t, costs(roofline_curve(0.01, 8, 0.01))).tokens_per_s for t in trees]
    assert best.tokens_per_s == max(by_hand)


def test_draft_levels_and_overheads_are_paid_per_step():
    trees = [(1, 2, 3, 1.0), (1, 6, 7, 1.5)]  # a deeper chain accepts more but drafts 4 more levels
    cheap = choose(1, trees, costs(lambda b, n: 0.01, level_s=0.0001))
    dear = choose(1, trees, costs(lambda b, n: 0.01, level_s=0.004))
    assert cheap.depth == 6 and dear.depth == 2
    step = price(1, 1, 6, 7, 1.5, costs(lambda b, n: 0.01, level_s=0.004, overhead_s=0.001)).step_s
    assert step == pytest.approx(0.01 + 0.004 + 5 * 0.004 + 0.001)  # verify + extend + (D-1) levels + overhead


def test_a_grafted_chain_is_verified_with_the_tree():
    # The chain's M tokens ride in the same verify: past the knee they cost what M more nodes cost.
    curve = costs(roofline_curve(0.01, 8, 0.01))
    plain, chained = price(1, 2, 3, 7, 2.0, curve), price(1, 2, 3, 7, 2.5, curve, lookup_tokens=4)
    assert plain.step_s == pytest.approx(0.01) and chained.step_s == pytest.approx(0.01 + 3 * 0.01)
    assert chained.lookup_tokens == 4 and chained.label() == "k=2 d=3 n=7 +lookup 4"
    # Ranked with the chain, the tree that leaves room for it under the knee wins.
    trees = [(2, 3, 7, 2.5), (1, 3, 4, 2.2)]
    assert choose(1, trees, curve).total_tokens == 7
    best = ranked(1, trees, curve, lookup_tokens=4)[0]
    assert (best.total_tokens, best.lookup_tokens) == (4, 4)


def test_falls_back_to_ar_when_no_tree_pays():
    # Compute-bound from the first token: a tree of N costs N steps and returns at most N tokens.
    trees = list(geometric_trees())
    linear = costs(lambda b, n: 0.001 * b * n, level_s=0.0001)
    for b in (1, 8, 64):
        best = choose(b, trees, linear)
        assert not best.speculative and best.total_tokens == 1 and best.top_k == 0
        assert best.tokens_per_s == pytest.approx(b / (0.001 * b))
    # ... while the same table on a flat curve speculates.
    assert choose(1, trees, costs(lambda b, n: 0.02)).speculative


def test_tree_shrinks_as_batch_grows_when_verify_turns_compute_bound():
    trees = list(geometric_trees())
    cost = costs(roofline_curve(0.02, 64, 0.0004), level_s=0.0005, overhead_s=0.0002)
    batches = [1, 2, 4, 8, 16, 32, 64, 128]
    picks = [choose(b, trees, cost) for b in batches]
    sizes = [p.total_tokens for p in picks]
    ks = [p.top_k for p in picks]
    assert sizes == sorted(sizes, reverse=True), sizes
    assert ks == sorted(ks, reverse=True), ks
    assert picks[0].top_k > 1 and sizes[0] > sizes[-1]
    assert not picks[-1].speculative  # 128 rows fill the knee alone: AR
    # each choice really is the best of everything priced at its batch size
    for b, p in zip(batches, picks):
        assert p.tokens_per_s == max(o.tokens_per_s for o in ranked(b, trees, cost))


def test_latency_curve_reads_between_and_past_its_points():
    curve = LatencyCurve.from_points([(1, 1, 1.0), (1, 4, 1.0), (1, 16, 2.0), (4, 1, 1.2), (4, 4, 2.0),
                                      (4, 4, 2.2), (4, 4, 9.0)])  # repeated points: the median (2.2)
    assert curve.seconds(1, 2) == 1.0  # flat region
    assert curve.seconds(1, 10) == pytest.approx(1.5)  # between 4 and 16
    assert curve.seconds(1, 28) == pytest.approx(3.0)  # past 16 along the last slope
    assert curve.seconds(2, 1) == pytest.approx(1 + (1.2 - 1) / 3)  # linear in batch size
    assert curve.seconds(8, 2) == curve.seconds(4, 4) == pytest.approx(2.2)  # past the largest batch: same tokens in flight
    assert non_decreasing([3.0, 1.0, 2.0, 5.0]) == [2.0, 2.0, 2.0, 5.0]
    dip = LatencyCurve.from_points([(1, 1, 1.0), (1, 2, 1.4), (1, 4, 0.6), (1, 8, 2.0)])
    assert [s for _, s in dip.points[1]] == pytest.approx([1.0, 1.0, 1.0, 2.0])  # a dip never prices cheaper
    with pytest.raises(ValueError, match="seconds > 0"):
        LatencyCurve.from_points([(1, 1, 0.0)])
