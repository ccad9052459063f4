"""The throughput-optimal tree policy on synthetic cost curves and acceptance tables:
it picks the known best tree, falls back to AR when nothing pays, its tree shrinks as
the batch grows when verification turns compute-bound (Theorem 1.3), and a batch whose
rows finish apart is priced at its slowest row."""

import itertools
import json
import math

import numpy as np
import pytest

from roofline.latency_curve import LatencyCurve, non_decreasing
from roofline.tree_costs import DraftCosts
from roofline.tree_policy import (
    Spread,
    StepCosts,
    autoregressive,
    batch_seconds,
    choose,
    mean_steps,
    price,
    ranked,
    spread,
    step_survival,
)

TOKENS = np.array([600.0])  # one replayed prompt, decoding 600 tokens


def moving(rate: float, tokens: np.ndarray = TOKENS) -> np.ndarray:
    """[rows, G] steps moving floor(rate) and floor(rate) + 1 positions, `rate` on average."""
    whole = int(rate)
    moves = np.zeros((tokens.size, whole + 2))
    moves[:, whole], moves[:, whole + 1] = 1 - (rate - whole), rate - whole
    return moves


def rows(trees):
    """(k, D, N, E[accepted]) -> (k, D, N, moves) of a prompt accepting that many a step."""
    return [(k, d, n, moving(1 + a)) for k, d, n, a in trees]


def roofline_curve(t0: float, knee: float, per_token: float):
    """V(b, n) = t0 + per_token * max(0, b*n - knee): flat, then compute-bound."""
    return lambda b, n: t0 + per_token * max(0.0, b * n - knee)


def costs(verify, level_s: float = 0.0, overhead_s: float = 0.0) -> StepCosts:
    return StepCosts(verify, lambda b, w: level_s, lambda b, w: level_s, lambda b: overhead_s, lambda b, d: overhead_s)


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
    best = choose(1, rows(trees), costs(roofline_curve(0.01, 8, 0.01)), TOKENS)
    assert (best.top_k, best.depth, best.total_tokens) == (2, 3, 7)  # 3 tokens in 10 ms beats 3.6 in 20 ms
    assert best.tokens_per_s == pytest.approx(3.0 / 0.01, rel=1e-3)  # 600 tokens: the last step's overshoot
    by_hand = [price(1, *t, TOKENS, costs(roofline_curve(0.01, 8, 0.01))).tokens_per_s for t in rows(trees)]
    assert best.tokens_per_s == max(by_hand)


def test_draft_levels_and_overheads_are_paid_per_step():
    trees = [(1, 2, 3, 1.0), (1, 6, 7, 1.5)]  # a deeper chain accepts more but drafts 4 more levels
    cheap = choose(1, rows(trees), costs(lambda b, n: 0.01, level_s=0.0001), TOKENS)
    dear = choose(1, rows(trees), costs(lambda b, n: 0.01, level_s=0.004), TOKENS)
    assert cheap.depth == 6 and dear.depth == 2
    step = price(1, *rows([(1, 6, 7, 1.5)])[0], TOKENS, costs(lambda b, n: 0.01, level_s=0.004, overhead_s=0.001)).step_s
    assert step == pytest.approx(0.01 + 0.004 + 5 * 0.004 + 0.001)  # verify + extend + (D-1) levels + overhead


def test_the_draft_reads_the_padded_path_and_the_overhead_follows_the_depth():
    # The decode feeds the draft every row's path padded to the tree's depth + 1 (the chain's
    # when that is deeper), whatever it accepted; the per-step rest grows with the levels.
    seen = []

    def path(b, w):
        seen.append(w)
        return 0.001 * w

    step_costs = StepCosts(lambda b, n: 0.01, lambda b, w: 0.002, path, lambda b: 0.0, lambda b, d: 0.0005 * d)
    step = price(1, *rows([(2, 3, 7, 2.0)])[0], TOKENS, step_costs).step_s
    assert seen[-1] == 4 and step == pytest.approx(0.01 + 0.004 + 2 * 0.002 + 0.0015)
    price(1, *rows([(2, 3, 7, 2.5)])[0], TOKENS, step_costs, lookup_tokens=5)
    assert seen[-1] == 6


def test_draft_costs_interpolate_the_overhead_over_depth_and_keep_their_json():
    level = LatencyCurve.from_points([(1, 1, 0.002), (1, 4, 0.003), (4, 1, 0.003)])
    path = LatencyCurve.from_points([(1, 2, 0.0025), (1, 9, 0.0035), (4, 2, 0.003)])
    costs = DraftCosts(level, path, {1: 0.0007, 4: 0.0008}, {1: {1: 0.0016, 3: 0.0020}, 4: {1: 0.0024, 3: 0.0030}})
    assert costs.spec_overhead(1, 1) == pytest.approx(0.0016) and costs.spec_overhead(1, 2) == pytest.approx(0.0018)
    assert costs.spec_overhead(1, 8) == pytest.approx(0.0016 + 7 * 0.0002)  # past the probes, the same slope
    assert costs.spec_overhead(3, 3) == pytest.approx(0.0030) and costs.ar_overhead(2) == pytest.approx(0.0007)
    assert DraftCosts(level, path, {1: 0.0}, {1: {1: 0.002, 3: 0.0001}}).spec_overhead(1, 8) == 0.0  # never negative
    assert DraftCosts.from_json(json.loads(json.dumps(costs.to_json()))) == costs


def test_a_grafted_chain_is_verified_with_the_tree():
    # The chain's M tokens ride in the same verify: past the knee they cost what M more nodes cost.
    curve = costs(roofline_curve(0.01, 8, 0.01))
    plain = price(1, *rows([(2, 3, 7, 2.0)])[0], TOKENS, curve)
    chained = price(1, *rows([(2, 3, 7, 2.5)])[0], TOKENS, curve, lookup_tokens=4)
    assert plain.step_s == pytest.approx(0.01) and chained.step_s == pytest.approx(0.01 + 3 * 0.01)
    assert chained.lookup_tokens == 4 and chained.label() == "k=2 d=3 n=7 +lookup 4"
    # Ranked with the chain, the tree that leaves room for it under the knee wins.
    trees = rows([(2, 3, 7, 2.5), (1, 3, 4, 2.2)])
    assert choose(1, trees, curve, TOKENS).total_tokens == 7
    best = ranked(1, trees, curve, TOKENS, lookup_tokens=4)[0]
    assert (best.total_tokens, best.lookup_tokens) == (4, 4)


def test_falls_back_to_ar_when_no_tree_pays():
    # Compute-bound from the first token: a tree of N costs N steps and returns at most N tokens.
    trees = rows(geometric_trees())
    linear = costs(lambda b, n: 0.001 * b * n, level_s=0.0001)
    for b in (1, 8, 64):
        best = choose(b, trees, linear, TOKENS)
        assert not best.speculative and best.total_tokens == 1 and best.top_k == 0
        assert best.tokens_per_s == pytest.approx(b / (0.001 * b))
    # ... while the same table on a flat curve speculates.
    assert choose(1, trees, costs(lambda b, n: 0.02), TOKENS).speculative


def test_tree_shrinks_as_batch_grows_when_verify_turns_compute_bound():
    trees = rows(geometric_trees())
    cost = costs(roofline_curve(0.02, 64, 0.0004), level_s=0.0005, overhead_s=0.0002)
    batches = [1, 2, 4, 8, 16, 32, 64, 128]
    picks = [choose(b, trees, cost, TOKENS) for b in batches]
    sizes = [p.total_tokens for p in picks]
    ks = [p.top_k for p in picks]
    assert sizes == sorted(sizes, reverse=True), sizes
    assert ks == sorted(ks, reverse=True), ks
    assert picks[0].top_k > 1 and sizes[0] > sizes[-1]
    assert not picks[-1].speculative  # 128 rows fill the knee alone: AR
    # each choice really is the best of everything priced at its batch size
    for b, p in zip(batches, picks):
        assert p.tokens_per_s == max(o.tokens_per_s for o in ranked(b, trees, cost, TOKENS))


def test_a_batch_lasts_until_its_slowest_row_and_finished_rows_leave_it():
    # Three rows drawn from four prompts needing 4, 10, 10 and 25 steps (one position a step),
    # each step at the cost of the rows still decoding: the expectation by enumeration.
    needed = np.array([4.0, 10.0, 10.0, 25.0])
    one = np.zeros((4, 2))
    one[:, 1] = 1
    survival = step_survival(needed, one)
    assert survival.tolist() == pytest.approx([np.mean(needed > s) for s in range(25)])
    step = np.array([1.0, 1.5, 1.8])
    runs = [sum(step[sum(s > t for s in drawn) - 1] for t in range(int(max(drawn))))
            for drawn in itertools.product(needed, repeat=3)]
    assert batch_seconds(step, survival) == pytest.approx(np.mean(runs))
    assert batch_seconds(step[:1], survival) == pytest.approx(needed.mean())  # one row: its mean


def test_steps_are_a_renewal_over_each_prompts_own_moves():
    # A prompt that moves 1 or 3 positions a step, evenly, decoding 4 tokens: 1+3 and 3+1 take
    # two steps, 1+1+1+1 four, 1+1+3 and 3+... by enumeration of the step sequences.
    moves = np.array([[0, 1, 0, 1]])
    tokens = np.array([4.0])
    finish = {}
    for seq in itertools.product((1, 3), repeat=4):
        moved, s = 0, 0
        while moved < 4:
            moved, s = moved + seq[s], s + 1
        finish[seq] = s
    expected = np.mean(list(finish.values()))
    assert mean_steps(tokens, moves[None])[0] == pytest.approx(expected)
    assert step_survival(tokens, moves).sum() == pytest.approx(expected)
    # Two prompts: the mean over them.
    two = mean_steps(np.array([4.0, 6.0]), np.array([[[0, 1, 0, 1], [0, 0, 1, 0]]]))[0]
    assert two == pytest.approx((expected + 3) / 2)


def test_rows_finishing_apart_cost_a_batch_what_their_mean_hides():
    # A copying prompt moving 6 positions a step and a chat one moving 1.2 on average: 2 a step
    # on average, as two prompts of 2. On a memory-bound device a step costs the same for 1 or
    # 4 rows, so at batch 4 the uneven pair runs about as long as its slowest row.
    tokens = np.array([60.0, 60.0])
    flat = costs(lambda b, n: 0.01 if n == 1 else 0.015)
    uneven = (1, 3, 4, np.array([[0, 0, 0, 0, 0, 0, 1.0], [0, 0.8, 0.2, 0, 0, 0, 0]]))
    even = (1, 3, 4, moving(2.0, tokens))
    assert choose(1, [uneven], flat, tokens).speculative and choose(4, [even], flat, tokens).speculative
    assert not choose(4, [uneven], flat, tokens).speculative  # AR wins: 60 steps of 10 ms against about 50 of 15
    priced = price(4, *uneven, tokens, flat)
    assert priced.step_s == pytest.approx(0.015)
    assert priced.occupancy < 0.7 and price(4, *even, tokens, flat).occupancy == pytest.approx(1.0)
    # Ranked exactly or bounded, the same best tree.
    trees = rows(geometric_trees())
    for b in (1, 4):
        assert ranked(b, trees, flat, TOKENS, keep=1)[0] == ranked(b, trees, flat, TOKENS, keep=40)[0]


def test_the_spread_is_what_runs_of_the_sweeps_prompts_would_measure():
    # Two prompts: one copies (6 positions a step), one chats (1.2). A run of one prompt is one
    # or the other, so its 10% and 90% are their own prices; a run of many is the pair's mix.
    tokens = np.array([60.0, 60.0])
    flat = costs(lambda b, n: 0.01 if n == 1 else 0.015, level_s=0.001)
    tree = (1, 3, 4)
    moves = np.array([[0, 0, 0, 0, 0, 0, 1.0], [0, 0.8, 0.2, 0, 0, 0, 0]])

    def speedup(rows, b=1):
        return (price(b, *tree, moves[rows], tokens[rows], flat).tokens_per_s
                / autoregressive(b, flat, tokens[rows]).tokens_per_s)

    choice = price(1, *tree, moves, tokens, flat)
    one = spread(choice, moves, tokens, flat, rows=1)
    assert one.rows == 1 and one.draws == 200
    assert one.speedup[0] == pytest.approx(speedup([1])) and one.speedup[-1] == pytest.approx(speedup([0]))
    chat_tau = 1 + price(1, *tree, moves[[1]], tokens[[1]], flat).accepted  # about 1.2
    assert one.tau[0] == pytest.approx(chat_tau) and one.tau[-1] == pytest.approx(6.0)
    many = spread(choice, moves, tokens, flat, rows=400)
    assert many.speedup[1] == pytest.approx(speedup([0, 1]), rel=0.02)
    assert many.speedup[-1] - many.speedup[0] < (one.speedup[-1] - one.speedup[0]) / 5
    # At batch 4 too, where rows finishing apart are priced; and through JSON.
    at4 = spread(price(4, *tree, moves, tokens, flat), moves, tokens, flat, rows=400)
    assert at4.speedup[1] == pytest.approx(speedup([0, 1], b=4), rel=0.03)
    assert Spread.from_json(json.loads(json.dumps(at4.to_json()))) == at4
    # A prompt whose reference ended at EOS on its first token measures nothing: runs of it alone
    # are not runs, and the rest are the chat prompt's.
    ended = spread(choice, moves, np.array([0.0, 60.0]), flat, rows=1)
    assert ended.speedup[0] == pytest.approx(speedup([1])) == ended.speedup[-1]


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
