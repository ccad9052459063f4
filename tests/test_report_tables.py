"""The arithmetic behind the report: pooling, fits, claims, headline choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.scaling_fit import fit_log10, fit_loglog
from reports import tables
from reports.load import load_profile, load_results
from reports.profiles import ceilings, fit_knee, knee_points
from reports.published import published_baselines
from roofline.tree_policy import NO_TREE

FIXTURES = Path(__file__).parent / "fixtures"


def test_pooled_tau_is_ratio_of_totals_not_mean_of_ratios():
    cells = pd.DataFrame({"emitted_tokens": [100, 300], "verify_steps": [50, 100], "tau": [2.0, 3.0]})
    assert tables.pooled_tau(cells) == pytest.approx(400 / 150)


def test_log10_fit_recovers_known_line():
    x = np.array([1e8, 3e8, 1e9, 3e9])
    fit = fit_log10(x, 0.25 * np.log10(x) + 0.5)
    assert fit.alpha == pytest.approx(0.25)
    assert fit.beta == pytest.approx(0.5)
    assert fit.r2 == pytest.approx(1.0)
    assert fit_log10([1e9, 1e9], [2.0, 2.1]) is None  # one distinct x: no fit


def test_knee_fit_recovers_two_piece_model():
    pts = pd.DataFrame({"tokens": [1, 4, 16, 32, 64, 128, 256]})
    pts["time_s"] = 0.02 + 0.001 * np.maximum(0, pts["tokens"] - 32)
    fit = fit_knee(pts, None)
    assert fit.knee == 32
    assert fit.t0 == pytest.approx(0.02)
    assert fit.per_token == pytest.approx(0.001)
    assert fit.per_row == 0.0


def test_claims_verdicts():
    tau = pd.DataFrame({"eagle2": [2.0, 2.0], "eagle3": [3.5, 3.0], "scylla": [3.7, 4.5]}, index=["a", "b"])
    c = tables.claims_table(tau).set_index(["baseline", "dataset"])
    assert c.loc[("eagle2", "a"), "verdict"] == "within claim"  # +1.7
    assert c.loc[("eagle2", "b"), "verdict"] == "above claim"  # +2.5
    assert c.loc[("eagle3", "a"), "verdict"] == "below claim"  # +0.2
    assert c.loc[("eagle3", "b"), "verdict"] == "within claim"  # +1.5 (claim is "at least")


def test_fixture_headline_and_series():
    res = load_results([FIXTURES / "report_results"])
    h = tables.choose_headline(res.ok)
    assert (h.temperature, h.batch_size, h.top_k_setting, h.depth, h.total_tokens) == (0.0, 1, "10", 5, 60)
    assert h.drafts == {m: f"drafts/{m}-L1-1B" for m in ("eagle2", "eagle3", "scylla")}
    series = {s.variable: s for s in tables.scaling_series(res.ok, h)}
    assert set(series) == {"pretrain_tokens", "draft_layers"}
    # The failed L8/humaneval cell drops humaneval from every point of the layer series.
    assert set(series["draft_layers"].points["datasets"]) == {5}
    assert series["pretrain_tokens"].fit.alpha > 0
    # Each point's net speed is the mean spec/AR ratio of its draft's cells in the series (one
    # tree, here top_k 4 at depth 5) on the series' datasets.
    assert series["draft_layers"].fixed.endswith("top_k=4, depth=5")
    layers = series["draft_layers"].points.iloc[0]
    cells = res.ok[(res.ok["draft"] == layers["draft"]) & (res.ok["dataset"] != "humaneval")
                   & (res.ok["top_k_setting"] == "4") & (res.ok["depth"] == 5) & (res.ok["batch_size"] == 1)
                   & (res.ok["temperature"] == 0.0)]
    assert len(cells) == 5
    assert layers["speedup"] == pytest.approx(cells["speedup_vs_ar"].mean())


def test_profiles_read():
    p = load_profile(FIXTURES / "report_profile_gpu")
    c = ceilings(p)
    assert c.bandwidth_kernel == "read"
    assert c.i_crit_spec == pytest.approx(9.89e14 / 4.8e12)
    assert len(knee_points(p)) == 25


def test_published_baselines_are_labelled():
    pub = published_baselines()
    assert set(pub["method"]) == {"eagle2", "eagle3"}
    assert pub["citation"].str.contains("arXiv:2503.01840").all()
    assert pub["tau"].between(1, 10).all() and pub["speedup"].between(1, 10).all()
    # Spot checks against the paper's Table 1 (Vicuna 13B, T=0, MT-bench).
    row = pub[(pub["target_model"] == "Vicuna-13B") & (pub["temperature"] == 0) & (pub["dataset"] == "mt_bench")]
    assert dict(zip(row["method"], row["tau"])) == {"eagle2": 4.83, "eagle3": 6.65}


def test_tree_policy_table_compares_auto_with_every_fixed_tree():
    def cell(b, setting, k, d, n, tps, dataset="gsm8k", method="eagle2"):
        return {"method": method, "draft": "d" if method != "ar" else None, "batch_size": b, "temperature": 0.0,
                "top_k_setting": setting, "top_k": k, "depth": d, "total_tokens": n, "tokens_per_s": tps,
                "dataset": dataset}

    rows = [cell(1, None, None, None, None, 20.0, method="ar"), cell(8, None, None, None, None, 100.0, method="ar")]
    for ds, scale in (("gsm8k", 1.0), ("alpaca", 0.5)):
        rows += [cell(1, "4", 4, 3, 10, 30 * scale, ds), cell(1, "4", 4, 5, 10, 28 * scale, ds),
                 cell(1, "8", 8, 3, 38, 25 * scale, ds), cell(1, "auto", 8, 2, 17, 29 * scale, ds),
                 cell(8, "4", 4, 3, 10, 80 * scale, ds), cell(8, "1", 1, 3, 4, 90 * scale, ds),
                 cell(8, "auto", 0, 0, 1, 99 * scale, ds)]
    pol = tables.tree_policy_table(pd.DataFrame(rows), 0.0).set_index("batch_size")
    assert pol.loc[1, "best_fixed"] == "k=4 d=3 n=10" and pol.loc[1, "best_fixed_tokens_per_s"] == pytest.approx(22.5)
    assert pol.loc[1, "auto"] == "k=8 d=2 n=17" and pol.loc[1, "auto_over_best"] == pytest.approx(29 / 30)
    assert pol.loc[8, "auto"] == NO_TREE and pol.loc[8, "auto_over_best"] == pytest.approx(99 / 90)
    assert pol.loc[1, "fixed_trees"] == 3 and pol.loc[8, "ar_tokens_per_s"] == 100.0
    # k*(b): best fixed top_k 4 at b=1 and 1 at b=8 -> slope log(1/4)/log(8)
    assert fit_loglog([1, 8], [4, 1]).alpha == pytest.approx(np.log(0.25) / np.log(8))
    assert fit_loglog([1, 8], [4, 0]) is None  # AR at b=8 leaves one point
    exact = fit_loglog([1, 2, 4, 8, 16], [16 * b ** -0.5 for b in (1, 2, 4, 8, 16)])
    assert exact.alpha == pytest.approx(-0.5) and exact.r2 == pytest.approx(1.0)
    surface = tables.throughput_surface(pd.DataFrame(rows), "eagle2", "d", 0.0)
    assert set(zip(surface["batch_size"], surface["top_k"], surface["depth"])) == {
        (1, 4, 3), (1, 4, 5), (1, 8, 3), (8, 4, 3), (8, 1, 3)}


def test_a_method_the_sweep_named_itself_reads_as_the_draft_it_ran():
    cells = load_results([FIXTURES / "report_results"]).cells
    eagle3 = cells[cells["method"] == "eagle3"]
    cells = pd.concat([cells, eagle3.assign(method="mine"), eagle3.assign(method="chained", lookup_tokens=4),
                       cells[(cells["method"] == "scylla") & (cells["draft_layers"] == 2)].assign(method="deep")])
    label = tables.method_labeller(cells)
    assert {m: label(m) for m in ("ar", "eagle3", "scylla", "mine", "chained", "deep", "not_run")} == {
        "ar": "AR", "eagle3": "EAGLE-3", "scylla": "Scylla",  # the registry's, whatever the layers
        "mine": "EAGLE-3 (mine)",  # would read as the registry's eagle3: keeps its name
        "chained": "EAGLE-3 +lookup 4", "deep": "Scylla-2", "not_run": "not_run"}
