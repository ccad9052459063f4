"""This machine's own bench baselines (reports/machine_baseline.py): recorded from a run that
passed the committed baseline, they check what the committed one cannot on another kind of
machine, and a refreshed committed baseline supersedes them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from reports import machine_baseline, regression
from reports.bench import MICRO_BASELINE, parse_args, record_own_baselines

CONFIG = {"sweep": "fixture", "dtype": "bfloat16"}


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SCYLLA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def cells(bench_cells) -> pd.DataFrame:
    return bench_cells


def slower_speculation(cells: pd.DataFrame, factor: float) -> pd.DataFrame:
    out = cells.copy()
    spec = out["method"] != "ar"
    out.loc[spec, "speedup_vs_ar"] *= factor
    return out


@pytest.fixture()
def committed_elsewhere(cells, tmp_path) -> Path:
    """The committed baseline as a machine of another kind made it: same sweep, same figures."""
    base = regression.make_baseline(regression.figures(cells), CONFIG, 0.25, "abc")
    base["machine"] = dict(base["machine"], cpu="Some Other CPU", isa=["avx2", "fma"], cores=64)
    path = tmp_path / "bench_baseline.json"
    path.write_text(json.dumps(base))
    return path


def test_the_machines_own_baseline_checks_the_ratios_the_committed_one_cannot(cells, home, committed_elsewhere):
    own = machine_baseline.sweep_path("regression", "bfloat16")
    assert own.is_relative_to(home / machine_baseline.FOLDER)
    first = machine_baseline.choose(own, committed_elsewhere, CONFIG)
    assert first.path == committed_elsewhere and not first.is_own and first.records and first.why_not_own is None

    # The committed baseline, from another kind of machine, cannot see spec/AR halve here.
    halved = regression.figures(slower_speculation(cells, 0.5))
    v = regression.compare(halved, regression.read_baseline(committed_elsewhere), CONFIG)
    assert v.ok and any("ratios are not compared" in n for n in v.notes), (v.failures, v.notes)

    # A passing run records this machine's figures; from then on the check is against them.
    figs = regression.figures(cells)
    machine_baseline.record(regression.make_baseline(figs, CONFIG, 0.25, "abc"), own, committed_elsewhere)
    later = machine_baseline.choose(own, committed_elsewhere, CONFIG)
    assert later.path == own and later.is_own and not later.records
    base = regression.read_baseline(own)
    assert regression.compare(figs, base, CONFIG).ok
    v = regression.compare(halved, base, CONFIG)
    assert v.failures and all(f.startswith("throughput ratio ") for f in v.failures), v.failures


def test_a_refreshed_committed_baseline_supersedes_the_machines(cells, home, committed_elsewhere):
    own = machine_baseline.sweep_path("regression", "bfloat16")
    machine_baseline.record(regression.make_baseline(regression.figures(cells), CONFIG, 0.25, "abc"), own,
                            committed_elsewhere)
    refreshed = json.loads(committed_elsewhere.read_text()) | {"git_commit": "def"}
    committed_elsewhere.write_text(json.dumps(refreshed))
    choice = machine_baseline.choose(own, committed_elsewhere, CONFIG)
    assert choice.path == committed_elsewhere and choice.records
    assert "passed another bench_baseline.json than the repository's now" in choice.why_not_own


def test_an_unreadable_or_other_sweeps_own_baseline_is_set_aside(cells, home, committed_elsewhere):
    own = machine_baseline.sweep_path("regression", "bfloat16")
    own.parent.mkdir(parents=True)
    own.write_bytes(b"\x00{ not json")
    choice = machine_baseline.choose(own, committed_elsewhere, CONFIG)
    assert choice.path == committed_elsewhere and choice.records and "does not read" in choice.why_not_own
    machine_baseline.record(regression.make_baseline(regression.figures(cells), CONFIG, 0.25, "abc"), own,
                            committed_elsewhere)
    other = machine_baseline.choose(own, committed_elsewhere, dict(CONFIG, sweep="another"))
    assert other.path == committed_elsewhere and "measured another sweep" in other.why_not_own


def test_each_precision_of_a_machine_keeps_its_own(home):
    assert machine_baseline.sweep_path("regression", "bfloat16") != machine_baseline.sweep_path("regression", "float32")
    assert machine_baseline.sweep_path("full", "bfloat16").parent == machine_baseline.micro_path("bfloat16").parent


def test_the_job_records_both_baselines_naming_what_they_passed(cells, home, tmp_path, capsys):
    committed = tmp_path / "bench_baseline.json"
    committed.write_text(json.dumps(regression.make_baseline(regression.figures(cells), CONFIG, 0.25, "abc")))
    sweep = machine_baseline.choose(machine_baseline.sweep_path("regression", "bfloat16"), committed, CONFIG)
    micro = machine_baseline.choose(machine_baseline.micro_path("bfloat16"), MICRO_BASELINE)
    figures = regression.make_baseline(regression.figures(cells), CONFIG, 0.25, "abc")
    record_own_baselines(sweep, micro, figures, MICRO_BASELINE, committed, asked=False)  # the committed micro file as this run's
    assert "recorded this machine's baselines" in capsys.readouterr().out
    assert json.loads(sweep.own.read_text())["reference"] == machine_baseline.reference(committed)
    assert json.loads(micro.own.read_text())["reference"] == machine_baseline.reference(MICRO_BASELINE)
    assert machine_baseline.choose(micro.own, MICRO_BASELINE).is_own


def test_a_named_baseline_is_checked_alone():
    assert parse_args([]).own_baselines
    assert not parse_args(["--baseline", "x.json"]).own_baselines
    with pytest.raises(SystemExit) as err:
        parse_args(["--baseline", "x.json", "--update-machine-baseline"])
    assert err.value.code == 2


def test_a_run_that_rewrites_the_machines_baseline_checks_against_the_committed(cells, home, committed_elsewhere):
    own = machine_baseline.sweep_path("regression", "bfloat16")
    machine_baseline.record(regression.make_baseline(regression.figures(cells), CONFIG, 0.25, "abc"), own,
                            committed_elsewhere)
    choice = machine_baseline.choose(own, committed_elsewhere, CONFIG, read_own=False)
    assert choice.path == committed_elsewhere and choice.own == own and choice.why_not_own is None


def test_a_home_that_takes_no_writes_leaves_the_run_standing(cells, tmp_path, monkeypatch, capsys):
    """SCYLLA_HOME/bench-baselines is a file here, so nothing can be recorded below it: the job
    says so in a note, and nothing is raised."""
    home = tmp_path / "home"
    (home / machine_baseline.FOLDER).parent.mkdir(parents=True)
    (home / machine_baseline.FOLDER).write_text("not a folder")
    monkeypatch.setenv("SCYLLA_HOME", str(home))
    committed = tmp_path / "bench_baseline.json"
    committed.write_text(json.dumps(regression.make_baseline(regression.figures(cells), CONFIG, 0.25, "abc")))
    sweep = machine_baseline.choose(machine_baseline.sweep_path("regression", "bfloat16"), committed, CONFIG)
    micro = machine_baseline.choose(machine_baseline.micro_path("bfloat16"), MICRO_BASELINE)
    record_own_baselines(sweep, micro, json.loads(committed.read_text()), MICRO_BASELINE, committed, asked=False)
    out = capsys.readouterr().out
    assert "note: this machine's baselines were not recorded: cannot write" in out, out
    assert "recorded this machine's baselines" not in out


def test_a_run_without_micro_benchmarks_records_the_sweep_alone(cells, home, tmp_path, capsys):
    """--skip-micro: whatever micro.json an earlier run left in OUT is not this run's to record."""
    committed = tmp_path / "bench_baseline.json"
    committed.write_text(json.dumps(regression.make_baseline(regression.figures(cells), CONFIG, 0.25, "abc")))
    sweep = machine_baseline.choose(machine_baseline.sweep_path("regression", "bfloat16"), committed, CONFIG)
    micro = machine_baseline.choose(machine_baseline.micro_path("bfloat16"), MICRO_BASELINE)
    record_own_baselines(sweep, micro, json.loads(committed.read_text()), None, committed, asked=True)
    assert sweep.own.is_file() and not micro.own.is_file()
    assert "(micro-benchmarks)" not in capsys.readouterr().out
