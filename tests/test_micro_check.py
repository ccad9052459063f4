"""The micro-benchmarks' check (reports/micro_check.py) on the committed pytest-benchmark file:
times compare only on the kind of machine that made the baseline."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from reports.bench import MICRO_BASELINE
from reports.micro_check import MICRO_SLOWDOWN, compare_micro, machine_kind, read_micro
from workloads.errors import ScyllaError


@pytest.fixture()
def base() -> dict:
    return read_micro(MICRO_BASELINE)


def slower(micro: dict, factor: float, only: str | None = None) -> dict:
    out = copy.deepcopy(micro)
    for name, b in out["benchmarks"].items():
        if only is None or name == only:
            b["stats"]["min"] *= factor
    return out


def test_the_same_machine_passes_within_the_slowdown(base):
    v = compare_micro(slower(base, 0.9 * MICRO_SLOWDOWN), base)
    assert v.ok, v.failures
    assert any(n.startswith("micro-benchmarks against the baseline: ") and "test_ar_step" in n for n in v.notes), v.notes


def test_the_same_machine_fails_naming_the_slower_benchmark(base):
    v = compare_micro(slower(base, 1.1 * MICRO_SLOWDOWN, only="test_ar_step"), base)
    assert len(v.failures) == 1 and v.failures[0].startswith("micro-benchmark test_ar_step: fastest round"), v.failures


def test_another_machine_is_shown_not_checked(base):
    """The AMX Xeon's AR step took 2.08x the EPYC baseline's: another machine, not a regression."""
    xeon = slower(base, 2.08)
    xeon["machine"]["cpu"].update(vendor_id_raw="GenuineIntel", family=6, model=143)
    xeon["machine"]["cpu"]["flags"] = xeon["machine"]["cpu"]["flags"] + ["amx_tile", "amx_bf16"]
    v = compare_micro(xeon, base)
    assert v.ok, v.failures
    assert any("not checked" in n and "GenuineIntel family 6 model 143" in n and "test_ar_step" in n and "(2.08x)" in n
               for n in v.notes), v.notes


def test_another_precision_is_another_kind(base):
    fp32, bf16 = slower(base, 3.0), copy.deepcopy(base)
    for doc, dtype in ((fp32, "float32"), (bf16, "bfloat16")):
        for b in doc["benchmarks"].values():
            b["extra_info"] = {"dtype": dtype, "threads": 2}
    assert compare_micro(fp32, bf16).ok
    assert not compare_micro(slower(bf16, 3.0), bf16).ok


def test_a_missing_benchmark_fails(base):
    now = copy.deepcopy(base)
    del now["benchmarks"]["test_tree_build"]
    assert compare_micro(now, base).failures == ["micro-benchmark test_tree_build: missing from this run"]


def test_an_unreadable_file_is_one_clear_error(tmp_path: Path):
    bad = tmp_path / "micro.json"
    bad.write_text(json.dumps({"benchmarks": []}))
    with pytest.raises(ScyllaError, match="cannot read micro-benchmark results"):
        read_micro(bad)


def test_the_committed_baseline_records_the_precision_of_its_sweep(base):
    """Both baselines come from one `--update-baseline` run: the micro-benchmarks ran in the
    sweep's dtype, so a run in another precision is not held to their times."""
    sweep = json.loads((MICRO_BASELINE.parent / "bench_baseline.json").read_text())
    assert machine_kind(base)["dtype"] == sweep["config"]["dtype"]
