"""`scylla scaling`: the log-linear fit and its interval on series with known slopes, the plan's
checks, and the whole pipeline (train a series, measure it, fit, resume; profile the device and
find the fastest tree per batch size) on a tiny random Llama."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_roofline import _tiny_plan
from test_train import make_tiny

from harness import scaling as law
from harness.pooled import fastest_fixed_trees
from harness.scaling_fit import T975, claim_verdict, fit_log10, fit_loglog, t975
from workloads.errors import ScyllaError


def test_t_quantiles_are_students():
    stats = pytest.importorskip("scipy.stats")
    for df, value in T975.items():
        assert value == pytest.approx(stats.t.ppf(0.975, df), abs=6e-4)
    assert t975(13) == T975[12]  # between entries: the wider interval


def test_fit_interval_covers_the_true_slope_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    x = np.array([3e4, 1e5, 3e5, 1e6, 3e6])
    covered = 0
    for _ in range(400):
        y = 0.3 * np.log10(x) + 1.0 + rng.normal(0, 0.05, len(x))
        fit = fit_log10(x, y)
        covered += fit.alpha_low <= 0.3 <= fit.alpha_high
    assert 0.92 <= covered / 400 <= 0.98
    exact = fit_log10(x, 0.3 * np.log10(x) + 1.0)
    assert (exact.alpha, exact.beta, exact.r2, exact.n) == (pytest.approx(0.3), pytest.approx(1.0), pytest.approx(1.0), 5)
    assert exact.alpha_ci95 == pytest.approx(0.0, abs=1e-9)
    assert np.isnan(fit_log10([1e4, 1e5], [1.0, 1.5]).alpha_ci95)  # two points: a line always fits


def test_the_verdict_says_whether_a_fit_shows_the_claimed_sign():
    x = [1, 2, 3, 4, 5]
    line = fit_log10(x, [1.5 + 0.3 * np.log10(v) for v in x])
    assert claim_verdict(line) == "log-linear, positive slope"
    assert claim_verdict(fit_log10(x, [1.70, 1.68, 1.67, 1.65, 1.63])).startswith("against the claim: a negative slope")
    assert claim_verdict(fit_log10(x, [1.39, 1.39, 1.37, 1.36, 1.38])) == "slope not shown positive (95% interval includes 0)"
    assert claim_verdict(fit_log10(x, [1.0, 1.9, 1.2, 1.8, 1.6])).startswith("slope not shown")
    # Theorem 1.3 claims a falling k*(b): the sign flips.
    assert claim_verdict(fit_loglog([1, 2, 4, 8], [8, 4, 2, 1]), sign=-1) == "log-linear, negative slope"
    assert claim_verdict(fit_log10([1, 2], [1.0, 1.1])) == "slope positive, untested (2 points)"
    assert claim_verdict(None) == "no fit"


def test_the_plan_refuses_what_cannot_make_a_series():
    with pytest.raises(ScyllaError, match="at least two different --budgets"):
        law.ScalingPlan(budgets=(1000, 1000))
    with pytest.raises(ScyllaError, match="layer counts must be 1.."):
        law.ScalingPlan(layers=(1, 99))
    with pytest.raises(ScyllaError, match="unknown dataset"):
        law.ScalingPlan(datasets=("mtbench",))
    with pytest.raises(ScyllaError, match="series must be some of"):
        law.ScalingPlan(series=("width",))
    with pytest.raises(ScyllaError, match="set by the scaling plan"):
        law.ScalingPlan(train={"pretrain_tokens": 5})
    with pytest.raises(ScyllaError, match="unknown training option"):
        law.ScalingPlan(train={"seq_lenn": 512})
    with pytest.raises(ScyllaError, match="less than one batch"):  # the recipe's own checks, before anything runs
        law.ScalingPlan(budgets=(100, 10_000))
    with pytest.raises(ScyllaError, match="at least two different --batch-sizes"):
        law.ScalingPlan(series=("batch",), batch_sizes=(4, 4))
    with pytest.raises(ScyllaError, match="--batch-top-k values and --batch-depth must be >= 1"):
        law.ScalingPlan(series=("batch",), batch_top_k=(0, 2))
    with pytest.raises(ScyllaError, match="unknown dataset"):
        law.ScalingPlan(batch_datasets=("gsm9k",))
    # Each draft once, largest budget first (its features serve every smaller budget); the batch
    # series measures the tokens series' best draft.
    plan = law.ScalingPlan(budgets=(1024, 8192), layers=(1, 2), layers_budget=1024)
    P, C = "projection", "concat"
    assert plan.points() == [(1, 8192, P), (1, 1024, P), (1, 1024, C), (2, 1024, P)]
    assert plan.points(law.TAU_SERIES) == plan.points() and plan.batch_draft() == (1, 8192, P)
    assert law.ScalingPlan(series=("batch",), budgets=(1024, 8192)).points() == [(1, 8192, P)]
    # The ablation's projection draft is the layers series' draft of the same size, trained once.
    assert [law.draft_name(p) for p in law.ScalingPlan(series=("layers", "arch"), layers=(1, 2)).points()] == [
        "scylla-L1-P131072", "scylla-L1-P131072-concat", "scylla-L2-P131072"]
    assert law.ScalingPlan(series=("arch",), arch_layers=3).points() == [(3, 131072, P), (3, 131072, C)]
    with pytest.raises(ScyllaError, match="layer counts must be 1.."):
        law.ScalingPlan(series=("arch",), arch_layers=0)


def test_the_ablation_compares_input_paths_per_dataset_and_pooled():
    """input_ablation on cells with known counters: pooled tau is the ratio of totals over the
    datasets both drafts ran, and the gain's interval is Student's over the per-dataset gains."""
    from harness.pooled import input_ablation
    from harness.scaling_fit import t975

    def cell(kind, dataset, emitted, steps, speedup):
        return {"draft_input": kind, "dataset": dataset, "emitted_tokens": emitted, "verify_steps": steps,
                "tau": emitted / steps, "speedup_vs_ar": speedup}

    cells = pd.DataFrame([cell("projection", "gsm8k", 30, 20, 0.9), cell("projection", "mt_bench", 40, 20, 1.1),
                          cell("concat", "gsm8k", 36, 20, 1.0), cell("concat", "mt_bench", 42, 20, 1.2),
                          cell("projection", "humaneval", 50, 20, 1.5)])  # no concat cell: left out
    table = input_ablation(cells).set_index("dataset")
    assert list(table.index) == ["gsm8k", "mt_bench", "pooled"]
    assert table["tau_gain"].tolist() == pytest.approx([0.3, 0.1, 0.2])
    assert (table.loc["pooled", "tau_projection"], table.loc["pooled", "tau_concat"]) == pytest.approx((70 / 40, 78 / 40))
    assert (table.loc["pooled", "speedup_projection"], table.loc["pooled", "speedup_concat"]) == pytest.approx((1.0, 1.1))
    assert table.loc["pooled", "gain_ci95"] == pytest.approx(t975(1) * np.std([0.3, 0.1], ddof=1) / np.sqrt(2))
    assert table["gain_ci95"].isna().sum() == 2


def test_a_plan_saved_before_a_field_existed_resumes_with_that_fields_default(tmp_path):
    plan = law.ScalingPlan(series=("tokens",), budgets=(1024, 8192))
    law.check_plan(tmp_path, plan)
    saved = json.loads((tmp_path / law.PLAN_FILE).read_text())
    for name in ("batch_sizes", "batch_top_k", "batch_depth", "batch_datasets"):
        del saved[name]
    (tmp_path / law.PLAN_FILE).write_text(json.dumps(saved))
    law.check_plan(tmp_path, plan)  # the same plan: resumes
    with pytest.raises(ScyllaError, match="holds a scaling run with batch_depth=4, not 3"):
        law.check_plan(tmp_path, law.ScalingPlan(series=("tokens",), budgets=(1024, 8192), batch_depth=3))


def test_cli_bad_input_is_one_line_and_a_dry_run_lists_the_drafts(tmp_path):
    def scylla(*args):
        return subprocess.run([sys.executable, "-m", "harness.cli", "scaling", *args], capture_output=True, text=True)

    bad = scylla("--out", str(tmp_path / "s"), "--budgets", "30k,lots")
    assert bad.returncode == 1 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr
    assert "not a token count: 'lots'" in bad.stderr
    dry = scylla("--out", str(tmp_path / "s"), "--dry-run", "--budgets", "30k,1M", "--layers", "1,3")
    assert dry.returncode == 0, dry.stderr
    assert "draft scylla-L1-P1000000: 1 layer(s)" in dry.stdout and "draft scylla-L3-P131072" in dry.stdout
    assert not (tmp_path / "s").exists()


def test_a_series_trains_measures_fits_and_resumes(tmp_path, shared_eval_dir, default_model_dir):
    from scylla_impl.target import Target
    from workloads.cache import scylla_home

    tiny = make_tiny(tmp_path / "tiny-llama", default_model_dir, seed=3)
    features = scylla_home() / "features" / Target.load(str(tiny), dtype="float32").info.fingerprint
    plan = law.ScalingPlan(
        target=str(tiny), series=("tokens", "layers", "arch"), budgets=(128, 256, 512), layers=(1, 2), layers_budget=128,
        sft_tokens=128,
        datasets=("mt_bench", "gsm8k"), prompts=2, max_new_tokens=8, top_k=2, depth=3, dtype="float32",
        data_dir=str(shared_eval_dir),
        train={"seq_len": 32, "batch_size": 4, "micro_batch": 4, "eval_sequences": 1, "draft_vocab": 0,
               "sft_answers": "sharegpt", "sft_mix": None},
    )
    out = tmp_path / "run"
    outcome = law.run(plan, out, progress="none", echo=lambda m: None)
    fits = outcome.fits
    drafts = sorted(p.name for p in (out / "drafts").iterdir())
    assert drafts == ["scylla-L1-P128", "scylla-L1-P128-concat", "scylla-L1-P256", "scylla-L1-P512", "scylla-L2-P128"]
    # The pretraining features were extracted once, for the largest budget, before its draft finished.
    first_done = (out / "drafts" / "scylla-L1-P512" / "model.safetensors").stat().st_mtime
    chunks = list(features.glob("pretrain-*/*.npy"))
    assert chunks and all(c.stat().st_mtime <= first_done for c in chunks)

    results = pd.read_parquet(out / "sweep" / "results.parquet")
    assert set(results["status"]) == {"ok"} and results["lossless"].dropna().all()
    assert sorted(results.loc[results["method"] == "scylla", "pretrain_tokens"].unique()) == [128, 256, 512]
    by = fits.set_index(["series", "dataset"])
    assert set(by.index) == {(s, d) for s in ("tokens", "layers") for d in ("mt_bench", "gsm8k", "pooled")}
    assert by.loc[("tokens", "pooled"), "n"] == 3 and list(by.loc[("tokens", "pooled"), "x"]) == [128, 256, 512]
    assert by.loc[("layers", "pooled"), "n"] == 2 and np.isnan(by.loc[("layers", "pooled"), "alpha_ci95"])
    # Pooled tau is the ratio of totals over both datasets, the fit a line through those points.
    cells = results[(results["method"] == "scylla") & (results["pretrain_tokens"] == 256) & (results["draft_layers"] == 1)]
    assert by.loc[("tokens", "pooled"), "y"][1] == pytest.approx(cells["emitted_tokens"].sum() / cells["verify_steps"].sum())
    assert fit_log10([128, 256, 512], by.loc[("tokens", "pooled"), "y"]).alpha == pytest.approx(by.loc[("tokens", "pooled"), "alpha"])
    assert set(fits["response"]) == {"tau"} and not (out / "sweep-batch").exists()
    saved = pd.read_parquet(out / law.FITS_FILE)
    assert saved[["series", "dataset", "n"]].equals(fits[["series", "dataset", "n"]])
    assert [list(t) for t in saved["y"]] == [list(t) for t in fits["y"]]
    assert "tau = alpha log10(pretraining tokens) + beta   (Thm 1.1: alpha > 0)" in law.describe(fits)
    # The architecture ablation: the two input paths side by side, in the results, the file and the report.
    spec = results[results["method"] == "scylla"]
    assert set(spec.loc[spec["draft"].str.endswith("-concat"), "draft_input"]) == {"concat"}
    assert set(spec.loc[~spec["draft"].str.endswith("-concat"), "draft_input"]) == {"projection"}
    ablation = outcome.ablation.set_index("dataset")
    assert list(ablation.index) == ["gsm8k", "mt_bench", "pooled"]
    concat = spec[spec["draft"].str.endswith("P128-concat")]
    assert ablation.loc["pooled", "tau_concat"] == pytest.approx(concat["emitted_tokens"].sum() / concat["verify_steps"].sum())
    assert pd.read_parquet(out / law.ABLATION_FILE).set_index("dataset")["tau_gain"].tolist() == pytest.approx(
        ablation["tau_gain"].tolist())
    assert "input projection vs plain concatenation" in law.describe_ablation(outcome.ablation)
    from reports import tables
    from reports.load import load_results

    res = load_results([out / "sweep"])
    found = tables.input_ablations(res.ok, tables.choose_headline(res.ok))
    assert len(found) == 1 and found[0].table["tau_gain"].tolist() == pytest.approx(ablation["tau_gain"].tolist())
    # ... and the drafts that only differ in input path make no scaling series of their own.
    series = tables.scaling_series(res.ok, tables.choose_headline(res.ok))
    assert sorted((s.variable, len(s.points)) for s in series) == [("draft_layers", 2), ("pretrain_tokens", 3)]

    # Again: nothing is retrained or re-measured; another plan in the same folder is refused.
    stamps = {p: p.stat().st_mtime for p in out.rglob("model.safetensors")}
    runs = len(list((out / "sweep" / "runs").iterdir()))
    law.run(plan, out, progress="none", echo=lambda m: None)
    assert {p: p.stat().st_mtime for p in out.rglob("model.safetensors")} == stamps
    assert pd.read_parquet(out / "sweep" / "results.parquet")["run_id"].nunique() == results["run_id"].nunique()
    assert len(list((out / "sweep" / "runs").iterdir())) >= runs
    with pytest.raises(ScyllaError, match="holds a scaling run with budgets"):
        law.run(law.ScalingPlan(**{**plan.__dict__, "budgets": (128, 512)}), out, progress="none", echo=lambda m: None)
    assert Path(out / law.PLAN_FILE).is_file()
    # A draft folder trained with other options is refused, not silently kept or retrained.
    config = out / "drafts" / "scylla-L2-P128" / "train_config.json"
    doc = json.loads(config.read_text())
    config.write_text(json.dumps({**doc, "lr": doc["lr"] * 2}))
    with pytest.raises(ScyllaError, match="scylla-L2-P128' was trained with other options"):
        law.run(plan, out, progress="none", echo=lambda m: None)



@pytest.mark.slow  # 52-72 s on the 2-core CI host: the fast suite keeps to its 20 minutes
def test_the_batch_series_profiles_the_device_and_fits_the_fastest_tree_per_batch(tmp_path, monkeypatch,
                                                                                 shared_eval_dir, default_model_dir):
    from harness import auto_trees
    from roofline import profile as prof
    from roofline import tree_costs
    from scylla_impl import calibration

    monkeypatch.setitem(prof.PLANS, ("cpu", True), _tiny_plan())  # seconds, not the real quick grid
    monkeypatch.setattr(auto_trees, "HELD_OUT_PROMPTS", 2)
    monkeypatch.setattr(auto_trees, "REPLAY_NEW_TOKENS", 8)
    monkeypatch.setattr(calibration, "TOP_KS", (1, 2))
    monkeypatch.setattr(calibration, "MAX_DEPTH", 2)
    monkeypatch.setattr(tree_costs, "LEVEL_WIDTHS", (1, 2))
    monkeypatch.setattr(tree_costs, "PATH_WIDTHS", (2, 3))
    tiny = make_tiny(tmp_path / "tiny-llama", default_model_dir, seed=4)
    plan = law.ScalingPlan(
        target=str(tiny), series=("batch",), budgets=(128,), sft_tokens=128, batch_sizes=(1, 2),
        batch_top_k=(1, 2), batch_depth=2, batch_datasets=("mt_bench",), prompts=2, max_new_tokens=8,
        dtype="float32", data_dir=str(shared_eval_dir),
        train={"seq_len": 32, "batch_size": 4, "micro_batch": 4, "eval_sequences": 1, "draft_vocab": 0,
               "sft_answers": "sharegpt", "sft_mix": None},
    )
    out = tmp_path / "run"
    fits = law.run(plan, out, progress="none", echo=lambda m: None).fits
    assert sorted(p.name for p in (out / "drafts").iterdir()) == ["scylla-L1-P128"]
    assert json.loads((out / "profile" / "profile.json").read_text())["knee"]["target"]["dtype"] == "float32"
    assert not (out / "sweep").exists()  # no tau series in this plan

    results = pd.read_parquet(out / "sweep-batch" / "results.parquet")
    assert set(results["status"]) == {"ok"} and results["lossless"].dropna().all()
    spec = results[results["method"] == "scylla"]
    assert set(zip(spec["batch_size"], spec["top_k_setting"])) == {(b, k) for b in (1, 2) for k in ("1", "2", "auto")}
    by = fits.set_index("dataset")
    assert list(by.index) == ["mt_bench", "pooled"] and set(fits["series"]) == {"batch"}
    # k* at each batch size is the top_k of the fastest fixed tree; the fit is log-log.
    best = fastest_fixed_trees(spec)
    assert list(by.loc["pooled", "x"]) == [1.0, 2.0] and list(by.loc["pooled", "y"]) == best["top_k"].tolist()
    assert by.loc["pooled", "alpha"] == pytest.approx(fit_loglog([1, 2], best["top_k"]).alpha)
    assert "log10 top_k* = alpha log10(batch size) + beta   (Thm 1.3: alpha < 0)" in law.describe(fits)
    assert pd.read_parquet(out / law.FITS_FILE)["n"].tolist() == fits["n"].tolist()


CPU_SERIES = Path(__file__).resolve().parent.parent / "reports" / "data" / "scaling_cpu"


def test_the_committed_cpu_series_render_with_their_fits(tmp_path):
    """The series measured on a 2-core CPU (reports/data/scaling_cpu/README.md has the commands) are
    real sweep results: the report finds their series, and the fits stored beside them are what
    those results give."""
    from reports import tables
    from reports.load import load_results

    files = sorted(CPU_SERIES.glob("*_results.parquet"))
    assert files, "no committed scaling results"
    for path in files:
        res = load_results([path])
        if path.name.startswith("arch"):  # the ablation: the report's table is the one the run stored
            stored = pd.read_parquet(CPU_SERIES / path.name.replace("_results", "_ablation"))
            (found,) = tables.input_ablations(res.ok, tables.choose_headline(res.ok))
            assert found.table["dataset"].tolist() == stored["dataset"].tolist()
            assert found.table["tau_gain"].tolist() == pytest.approx(stored["tau_gain"].tolist())
            continue
        fits = pd.read_parquet(CPU_SERIES / path.name.replace("_results", "_fits")).set_index("dataset")
        if fits["series"].iloc[0] == "batch":  # k*(b): the report's tree-policy table finds the same k*
            policy = tables.tree_policy_table(res.ok, 0.0)
            assert policy["best_fixed_top_k"].tolist() == list(fits.loc["pooled", "y"])
            assert law.fit_topk(pd.read_parquet(path)).set_index("dataset")["alpha"].tolist() == pytest.approx(
                fits["alpha"].tolist())
            continue
        series = {s.variable: s for s in tables.scaling_series(res.ok, tables.choose_headline(res.ok))}
        variable = fits["variable"].iloc[0]
        assert series[variable].fit.alpha == pytest.approx(fits.loc["pooled", "alpha"])
        assert list(series[variable].points["x"]) == list(fits.loc["pooled", "x"])
    html = tmp_path / "scaling.html"
    done = subprocess.run([sys.executable, "-m", "harness.cli", "report", *map(str, files), "-o", str(html)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    page = html.read_text(encoding="utf-8")
    assert "Least-squares fit of tau = alpha log10(x) + beta" in page and "Architecture ablation: Scylla" in page
