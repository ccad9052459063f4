"""Raw counters -> row metrics, on hand-made counters with hand-checked values."""


import numpy as np
import pytest

from harness.metrics import LosslessCheck, acceptance, compare_outputs, speedup, summarize
from harness.storage import Reference
from scylla_impl.decode import PHASES, DecodeStats


def stats(accepted, active, emitted, drafted, step_s, decode_s, prefill_s=0.01, phases=None):
    """The engine's counters; phases not given took no time (as the engine records them)."""
    phases = {p: np.asarray((phases or {}).get(p, np.zeros(len(step_s)))) for p in PHASES}
    return DecodeStats(
        accepted=np.array(accepted), active=np.array(active, dtype=bool), emitted=np.array(emitted),
        drafted=np.array(drafted), step_s=np.array(step_s), decode_s=decode_s, prefill_s=prefill_s,
        phase_s=phases, first_tokens=np.ones(np.shape(active)[1], dtype=int),
    )


def two_calls():
    # call 1: batch 2, 3 steps; row 1 finishes after step 2
    a = stats(accepted=[[3, 0], [1, 2], [0, 0]], active=[[1, 1], [1, 1], [1, 0]],
              emitted=[[4, 1], [2, 3], [1, 0]], drafted=[[10, 10], [10, 10], [10, 0]],
              step_s=[0.1, 0.2, 0.3], decode_s=0.5,
              phases={"draft": np.array([0.01, 0.02, 0.03]), "verify": np.array([0.05, 0.06, 0.07])})
    # call 2: batch 1, 2 steps; the last step accepted 3 but only 2 fit under max_new_tokens
    b = stats(accepted=[[2], [3]], active=[[1], [1]], emitted=[[3], [2]], drafted=[[10], [10]],
              step_s=[0.05, 0.25], decode_s=0.3, phases={"draft": np.array([0.04, 0.05]), "verify": np.array([0.08, 0.09])})
    return [a, b]


def test_summarize_hand_checked():
    m = summarize(two_calls(), depth=3)
    assert m["verify_steps"] == 7  # active (step, row) pairs
    assert m["batch_steps"] == 5
    assert m["emitted_tokens"] == 16  # the prefill token is not a decode-loop token
    assert m["drafted_nodes"] == 70
    assert m["accepted_tokens"] == 11
    assert m["tau"] == pytest.approx(16 / 7)
    # requests: 7/3, 4/2, 5/2
    assert m["tau_request_mean"] == pytest.approx((7 / 3 + 2 + 2.5) / 3)
    # accepted values 3,0,1,2,0,2,3: A1=5, A2=4, A3=2 of 7 steps
    assert m["accept_uncond"] == pytest.approx([5 / 7, 4 / 7, 2 / 7])
    assert m["accept_cond"] == pytest.approx([5 / 7, 4 / 5, 2 / 4])
    assert m["tokens_per_s"] == pytest.approx(16 / 0.8)
    assert m["decode_s"] == pytest.approx(0.8)
    assert m["prefill_s"] == pytest.approx(0.02)
    assert m["step_time_median_s"] == pytest.approx(0.2)
    assert m["step_time_p90_s"] == pytest.approx(0.28)
    assert m["draft_time_median_s"] == pytest.approx(0.03)
    assert m["verify_time_median_s"] == pytest.approx(0.07)
    assert m["tree_time_median_s"] == m["commit_time_median_s"] == m["accept_time_median_s"] == 0.0


def test_ar_counters_give_tau_one():
    steps, b = 6, 2
    active = np.ones((steps, b), dtype=bool)
    active[4:, 1] = False
    emitted = active.astype(int)
    ar = stats(accepted=np.zeros((steps, b), int), active=active, emitted=emitted, drafted=np.zeros((steps, b), int),
               step_s=[0.02] * steps, decode_s=0.12)
    m = summarize([ar], depth=None)
    assert m["tau"] == 1.0 and m["tau_request_mean"] == 1.0
    assert m["accept_cond"] is None and m["accept_uncond"] is None
    assert m["emitted_tokens"] == 10 and m["verify_steps"] == 10
    assert m["tokens_per_s"] == pytest.approx(10 / 0.12)


def test_no_steps_gives_nulls_not_crashes():
    empty = stats(accepted=np.zeros((0, 1), int), active=np.zeros((0, 1), bool), emitted=np.zeros((0, 1), int),
                  drafted=np.zeros((0, 1), int), step_s=[], decode_s=0.0)
    m = summarize([empty], depth=2)
    assert m["tau"] is None and m["tau_request_mean"] is None and m["tokens_per_s"] is None
    assert m["accept_cond"] == [None, None]


def test_acceptance_conditional_undefined_after_zero():
    cond, uncond = acceptance(np.array([0, 0, 1]), np.ones(3, bool), 3)
    assert uncond == pytest.approx([1 / 3, 0, 0])
    assert cond[:2] == pytest.approx([1 / 3, 0]) and cond[2] is None


def test_speedup_and_lossless_compare():
    assert speedup(30.0, 20.0) == pytest.approx(1.5)
    assert speedup(30.0, None) is None and speedup(None, 20.0) is None
    ar = {("1", 0): Reference([1, 2, 3]), ("2", 0): Reference([4, 5])}
    assert compare_outputs({("1", 0): [1, 2, 3], ("2", 0): [4, 5]}, ar) == LosslessCheck(0, 0)
    assert compare_outputs({("1", 0): [1, 2, 3], ("2", 0): [4, 6]}, ar) == LosslessCheck(1, 0)
    assert not compare_outputs({("1", 0): [1, 2, 3]}, ar).lossless  # a missing request is a mismatch


@pytest.mark.parametrize("mine,want", [
    ([7, 8, 9], LosslessCheck(0, 0)),  # identical
    ([7, 5, 1], LosslessCheck(0, 1)),  # one of AR's rivals at the token where they part, then anything
    ([7, 6, 1], LosslessCheck(0, 1)),  # the other rival (a three-way tie)
    ([7, 4, 1], LosslessCheck(1, 0)),  # parts at that token, but not to a rival
    ([7, 8, 3], LosslessCheck(1, 0)),  # the third token had no rival: a defect
    ([7, 8], LosslessCheck(1, 0)),  # stops early: never a tie
])
def test_near_tie_rule(mine, want):
    ar = {("p", 0): Reference([7, 8, 9], rivals=[[], [5, 6], []])}
    got = compare_outputs({("p", 0): mine}, ar)
    assert got == want and got.lossless is (want.mismatches == 0)
