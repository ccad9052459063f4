"""The report in a real browser: headless Chromium opens the fixture report from disk.

Checks what a reader depends on: nothing is fetched from the network, nothing logs an
error, every figure decodes, the page fits a laptop screen without sideways scrolling,
and the numbers in the tables are the numbers in the Parquet file (recomputed here
independently of reports/tables.py, from the raw counters).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from reports.browser import find_chromium, inspect_page

FIXTURES = Path(__file__).parent / "fixtures"
RESULTS = FIXTURES / "report_results"
PROFILES = [FIXTURES / "report_profile_cpu", FIXTURES / "report_profile_gpu"]
# Every figure the fixture has data for (the fixture is built to exercise all of them).
EXPECTED_FIGURES = {"roofline", "knee", "tau", "positions", "throughput", "heatmap", "scaling",
                    "surface-eagle2", "surface-eagle3", "surface-scylla"}
LAPTOP = (1366, 768)

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="Chromium not found: install the Debian package `chromium` (or set SCYLLA_CHROMIUM) to run the browser test",
)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from reports.html import build_report
    from reports.load import load_profile, load_results

    out = tmp_path_factory.mktemp("report") / "report.html"
    out.write_text(build_report(load_results([RESULTS]), [load_profile(p) for p in PROFILES]))
    return inspect_page(out, width=LAPTOP[0], height=LAPTOP[1])


@pytest.fixture(scope="module")
def cells() -> pd.DataFrame:
    return pd.read_parquet(RESULTS / "results.parquet")


def test_no_console_errors(page):
    assert page.console_errors == []


def test_no_network_requests(page):
    assert page.failed_requests == []
    # The figures are data: URIs (Chromium lists them as requests); anything else would
    # be a fetch from outside the file.
    assert [u for u in page.requests if not u.startswith("data:")] == []


def test_every_figure_loads(page):
    loaded = {i["figure"] for i in page.images if i["complete"] and i["width"] > 0 and i["height"] > 0}
    assert loaded == EXPECTED_FIGURES
    assert page.absent_figures == []
    assert all(i["shown"] > 300 for i in page.images), "a figure is drawn too small to read"


def test_fits_a_laptop_screen(page):
    assert page.scroll_width <= page.viewport_width


def test_cells_table_equals_parquet(page, cells):
    ok = cells[cells["status"] == "ok"].set_index("cell_id")
    rows = page.table("cells")["rows"]
    assert len(rows) == len(ok)
    assert {r["cell_id"] for r in rows} == set(ok.index)
    for r in rows:
        want = ok.loc[r["cell_id"]]
        got = r["cells"]
        assert got["tau"] == f"{want['tau']:.2f}"
        assert got["tokens_per_s"] == f"{want['tokens_per_s']:.1f}"
        assert int(got["batch_size"]) == want["batch_size"]
        if want["method"] != "ar":
            assert got["speedup_vs_ar"] == f"{want['speedup_vs_ar']:.2f}"
            assert int(got["top_k"]) == want["top_k"]
            assert int(got["depth"]) == want["depth"]


def test_tau_table_equals_parquet(page, cells):
    # The headline configuration of the fixture: T=0, batch 1, top_k 10, depth 5, N 60,
    # each method's main draft. tau pooled from counters: sum(emitted) / sum(steps).
    ok = cells[(cells["status"] == "ok") & (cells["temperature"] == 0) & (cells["batch_size"] == 1)]
    spec = ok[(ok["top_k_setting"] == "10") & (ok["depth"] == 5) & (ok["total_tokens"] == 60)
              & (ok["draft"] == "drafts/" + ok["method"] + "-L1-1B")]
    sel = pd.concat([ok[ok["method"] == "ar"], spec])
    sums = sel.groupby(["dataset", "method"])[["emitted_tokens", "verify_steps"]].sum()
    expected = (sums["emitted_tokens"] / sums["verify_steps"]).unstack()
    labels = {"ar": "AR", "eagle2": "EAGLE-2", "eagle3": "EAGLE-3", "scylla": "Scylla"}
    table = page.table("tau")
    names = {"MT-bench": "mt_bench", "HumanEval": "humaneval", "GSM8K": "gsm8k", "Alpaca": "alpaca",
             "CNN/DM": "cnn_dm", "Natural Questions": "natural_questions"}
    seen = 0
    for row in table["rows"]:
        label = row["cells"]["dataset"]
        if label == "all datasets":
            continue
        d = names[label]
        for m, lab in labels.items():
            assert row["cells"][m] == f"{expected.loc[d, m]:.2f}", (d, lab)
            seen += 1
    assert seen == 6 * 4


def test_throughput_table_equals_parquet(page, cells):
    ok = cells[(cells["status"] == "ok") & (cells["temperature"] == 0) & (cells["method"] != "ar")]
    ok = ok[(ok["depth"] == 5) & (ok["draft"] == "drafts/" + ok["method"] + "-L1-1B")]
    ok = ok[(ok["top_k_setting"] == "auto") | (ok["total_tokens"] == 60)]
    expected = ok.groupby(["method", "batch_size", "top_k_setting"])["speedup_vs_ar"].mean()
    rows = [r["cells"] for r in page.table("throughput")["rows"] if r["cells"]["method"] != "AR"]
    inverse = {"EAGLE-2": "eagle2", "EAGLE-3": "eagle3", "Scylla": "scylla"}
    assert len(rows) == len(expected)
    for r in rows:
        key = (inverse[r["method"]], int(r["batch_size"]), r["top_k_setting"])
        assert r["speedup"] == f"{expected.loc[key]:.2f}", key


def test_failed_cells_listed_with_errors(page, cells):
    failed = cells[cells["status"] == "failed"].set_index("cell_id")
    rows = page.table("failed")["rows"]
    assert {r["cell_id"] for r in rows} == set(failed.index)
    for r in rows:
        assert r["cells"]["error"] == failed.loc[r["cell_id"], "error"]


def test_lossless_mismatch_is_shown(page, cells):
    bad = cells[(cells["lossless"] == False)]  # noqa: E712
    rows = page.table("lossless_failures")["rows"]
    assert [r["cell_id"] for r in rows] == list(bad["cell_id"])
