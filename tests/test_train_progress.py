"""Off a terminal, training is never silent: a line a minute with tokens, speed and ETA."""

import io
import sys
import time

from scylla_impl.training import display


def test_lines_off_a_terminal_carry_progress_and_eta(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)  # not a terminal, as in CI or the bench's log
    progress = display.TrainDisplay("auto", enabled=True)
    assert progress.mode == "lines"
    clock = iter([0.0, 61.0, 122.0])
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    progress.start(total=4000, done=1000)  # a resumed run: 1000 tokens were done before
    progress.step(1000, {"sim_accept": float("nan")})
    progress.step(1000, {"sim_accept": float("nan")})
    lines = err.getvalue().splitlines()
    assert lines[0] == "[train] train: 2000/4000 tokens, 16.4 tok/s, 61s, ETA 122s"
    assert lines[1] == "[train] train: 3000/4000 tokens, 16.4 tok/s, 122s, ETA 61s"


def test_work_in_lumps_that_ends_past_its_total_says_what_was_wanted(monkeypatch):
    # The target's answers arrive a batch of 32 at a time, so the last batch overshoots the budget.
    from workloads.progress import ProgressBar

    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    clock = iter([0.0, 10.0, 20.0])
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    bar = ProgressBar("train", "target answers", 5910, unit="tokens", rate_unit="tok", mode="lines", every_s=0)
    bar.update(9227)
    assert err.getvalue().splitlines() == ["[train] target answers: 9227 tokens (5910 wanted), 922.7 tok/s, 10s"]
    bar = ProgressBar("train", "target answers", 100, unit="tokens", mode="bar")
    bar.skip(60)
    bar.update(90)
    assert (bar.done, bar._bar.total, bar._bar.n) == (150, 150, 150)  # a full bar, not one at 150%
    bar.close()
