"""`scylla scaling`: the log-linear fit and its interval on series with known slopes, the plan's
checks, and the whole pipeline (train a series, measure it, fit, resume) on a tiny random Llama."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_train import make_tiny

from harness import scaling as law
from harness.scaling_fit import T975, fit_log10, t975
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
    # Each draft once, largest budget first (its features serve every smaller budget).
    plan = law.ScalingPlan(budgets=(1024, 8192), layers=(1, 2), layers_budget=1024)
    assert plan.points() == [(1, 8192), (1, 1024), (2, 1024)]


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
        target=str(tiny), budgets=(128, 256, 512), layers=(1, 2), layers_budget=128, sft_tokens=128,
        datasets=("mt_bench", "gsm8k"), prompts=2, max_new_tokens=8, top_k=2, depth=3, dtype="float32",
        data_dir=str(shared_eval_dir),
        train={"seq_len": 32, "batch_size": 4, "micro_batch": 4, "eval_sequences": 1, "draft_vocab": 0,
               "sft_answers": "sharegpt", "sft_mix": None},
    )
    out = tmp_path / "run"
    fits = law.run(plan, out, progress="none", echo=lambda m: None)
    drafts = sorted(p.name for p in (out / "drafts").iterdir())
    assert drafts == ["scylla-L1-P128", "scylla-L1-P256", "scylla-L1-P512", "scylla-L2-P128"]
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
    assert by.loc[("tokens", "pooled"), "tau"][1] == pytest.approx(cells["emitted_tokens"].sum() / cells["verify_steps"].sum())
    assert fit_log10([128, 256, 512], by.loc[("tokens", "pooled"), "tau"]).alpha == pytest.approx(by.loc[("tokens", "pooled"), "alpha"])
    saved = pd.read_parquet(out / law.FITS_FILE)
    assert saved[["series", "dataset", "n"]].equals(fits[["series", "dataset", "n"]])
    assert [list(t) for t in saved["tau"]] == [list(t) for t in fits["tau"]]
    assert "tau = alpha log10(pretraining tokens (Thm 1.1)) + beta" in law.describe(fits)

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
        series = {s.variable: s for s in tables.scaling_series(res.ok, tables.choose_headline(res.ok))}
        fits = pd.read_parquet(CPU_SERIES / path.name.replace("_results", "_fits")).set_index("dataset")
        variable = fits["variable"].iloc[0]
        assert series[variable].fit.alpha == pytest.approx(fits.loc["pooled", "alpha"])
        assert list(series[variable].points["x"]) == list(fits.loc["pooled", "x"])
    html = tmp_path / "scaling.html"
    done = subprocess.run([sys.executable, "-m", "harness.cli", "report", *map(str, files), "-o", str(html)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Least-squares fit of tau = alpha log10(x) + beta" in html.read_text(encoding="utf-8")
