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
