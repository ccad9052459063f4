"""`--dtype auto`: one rule, timed on the work it decides for."""

import json
import math

import pytest
import torch

from scylla_impl import precision
from scylla_impl.target import AUTO_DTYPE_FILE, Target, auto_dtype
from workloads.cache import scylla_home


@pytest.mark.parametrize(("bf16", "fp32", "chosen"), [
    (2e12, 5e11, "bfloat16"),   # a GPU, or a CPU with native bf16 on bulk matmuls
    (1.8e10, 1.6e11, "float32"),  # a CPU that emulates bf16
    (1.1e11, 1.0e11, "float32"),  # faster, but not by enough to be worth the rounding
])
def test_bf16_is_chosen_only_where_it_is_clearly_faster(bf16, fp32, chosen):
    assert precision.choose(bf16 / fp32) == chosen


def test_decoding_auto_is_timed_on_the_model_once_and_remembered(monkeypatch, default_model_dir):
    """Bulk work takes the bulk matmul's verdict; decoding's `auto` times the target itself in
    both precisions where bf16 is native, keeps the verdict with its times and reuses it, and a
    damaged record is measured again."""
    assert math.isfinite(precision.bf16_speedup("cpu")) and precision.fast_dtype("cpu") in ("float32", "bfloat16")
    record = scylla_home() / AUTO_DTYPE_FILE
    record.unlink(missing_ok=True)  # a cache: measured afresh here
    chosen = auto_dtype("default", "cpu")
    if precision.fast_dtype("cpu") == "float32":  # bf16 emulated here: nothing to time
        assert chosen == "float32" and not record.exists()
        return
    (entry,) = json.loads(record.read_text()).values()
    assert entry["dtype"] == chosen == precision.choose(entry["float32_step_s"] / entry["bfloat16_step_s"])

    def no_timing(self, reps=5):
        raise AssertionError("timed again")

    monkeypatch.setattr(Target, "decode_step_seconds", no_timing)
    assert Target.load("default", dtype="auto").dtype == getattr(torch, chosen)  # the remembered verdict
    record.write_text("{not json")
    with pytest.raises(AssertionError, match="timed again"):
        auto_dtype("default", "cpu")
    monkeypatch.undo()
    again = auto_dtype("default", "cpu")
    assert json.loads(record.read_text()).popitem()[1]["dtype"] == again
