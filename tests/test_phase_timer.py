"""The decode loop's phase split: each interval lands in the phase that was running, steps add
up to the loop's own step times, and nothing is lost between steps."""

import time

import numpy as np
import pytest
import torch

from scylla_impl.decode import PHASES, generate
from scylla_impl.decode_config import DecodeConfig
from scylla_impl.drafts import load_draft
from scylla_impl.phase_timer import PhaseTimer


def test_intervals_go_to_the_phase_that_was_running():
    timer = PhaseTimer(torch.device("cpu"), ("a", "b", "c"))
    sleeps = [{"a": 0.02, "b": 0.01}, {"a": 0.0, "b": 0.03}]
    for step in sleeps:
        timer("a")
        time.sleep(step["a"])
        timer("b")
        time.sleep(step["b"])
        timer.end_step()
    got = timer.resolve()
    assert set(got) == {"a", "b", "c"} and all(v.shape == (2,) for v in got.values())
    for name in ("a", "b"):
        want = np.array([s[name] for s in sleeps])
        assert np.all(got[name] >= want) and np.all(got[name] < want + 0.015), (name, got[name])
    assert np.all(got["c"] < 0.005)  # only the instant before the first boundary


def test_time_between_steps_carries_the_running_phase():
    timer = PhaseTimer(torch.device("cpu"), ("a", "b"))
    timer("a")
    timer.end_step()
    time.sleep(0.02)  # still "a": the next step has not named another phase yet
    timer("b")
    timer.end_step()
    got = timer.resolve()
    assert got["a"][1] >= 0.02 and got["b"][1] < 0.005


def test_unknown_phase_is_refused():
    timer = PhaseTimer(torch.device("cpu"), ("a",))
    with pytest.raises(ValueError, match="unknown phase 'b'"):
        timer("b")


@pytest.mark.parametrize("draft_spec", [None, "random:eagle2"])
def test_decode_phases_add_up_to_each_step(target_fp32, mt_bench_prompts, draft_spec):
    draft = load_draft(draft_spec, target_fp32) if draft_spec else None
    stats = generate(target_fp32, mt_bench_prompts[:2], draft, DecodeConfig(top_k=4, depth=3, total_tokens=8,
                                                                            max_new_tokens=12)).stats
    assert set(stats.phase_s) == set(PHASES)
    split = sum(stats.phase_s[p] for p in PHASES)  # [steps]
    assert split.shape == stats.step_s.shape
    # A step's phases span from the previous step's end to its own: the loop's step time plus
    # the instant between steps.
    np.testing.assert_allclose(split, stats.step_s, rtol=0.05, atol=2e-3)
    assert stats.phase_s["verify"].min() > 0
    assert (stats.phase_s["draft"].sum() > 0) == (draft is not None)
