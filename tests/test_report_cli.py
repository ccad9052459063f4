"""`scylla report` from the command line: the fixture builds, bad input is one line and exit 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def scylla(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def one_line_error(args: list[str], monkeypatch, capsys) -> str:
    """Run `scylla ARGS` in this process (the console entry point's own error handling)."""
    from harness.cli import main

    monkeypatch.setattr(sys, "argv", ["scylla", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 1, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_report_from_fixture(tmp_path):
    out = tmp_path / "report.html"
    proc = scylla("report", str(FIXTURES / "report_results"), "--profile", str(FIXTURES / "report_profile_cpu"),
                  "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    # Self-contained: no reference to anything outside the file.
    for needle in ("http://", "https://", "<script", "<link", "src=\"file:"):
        assert needle not in page.replace("http-equiv", ""), needle
    assert page.count('data-figure="') == 10  # 7 sections' figures + one tree-policy surface per method
    assert 'id="tree-policy"' in page and "auto / best" in page


def test_missing_directory(tmp_path, monkeypatch, capsys):
    msg = one_line_error(["report", str(tmp_path / "nope"), "-o", str(tmp_path / "r.html")], monkeypatch, capsys)
    assert "not found" in msg


def test_directory_without_parquet(tmp_path, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    msg = one_line_error(["report", str(tmp_path / "empty"), "-o", str(tmp_path / "r.html")], monkeypatch, capsys)
    assert "no results.parquet" in msg


def test_corrupt_parquet(tmp_path, monkeypatch, capsys):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "results.parquet").write_bytes(b"PAR1 this is not really parquet PAR1")
    msg = one_line_error(["report", str(d), "-o", str(tmp_path / "r.html")], monkeypatch, capsys)
    assert "not a valid Parquet file" in msg


def test_bad_profile(tmp_path, monkeypatch, capsys):
    p = tmp_path / "prof"
    p.mkdir()
    (p / "profile.json").write_text("{ not json")
    msg = one_line_error(["report", str(FIXTURES / "report_results"), "--profile", str(p),
                          "-o", str(tmp_path / "r.html")], monkeypatch, capsys)
    assert "profile.json" in msg


def test_missing_columns_degrade(tmp_path):
    """A results file with only the core columns still gives a report that names what is missing."""
    d = tmp_path / "old"
    d.mkdir()
    table = pa.table({
        "cell_id": ["a", "b"], "status": ["ok", "ok"], "method": ["ar", "scylla"],
        "dataset": ["gsm8k", "gsm8k"], "batch_size": [1, 1], "temperature": [0.0, 0.0],
        "tau": [1.0, 2.5], "tokens_per_s": [10.0, 18.0],
    })
    pq.write_table(table, d / "results.parquet")
    out = tmp_path / "r.html"
    from reports.html import build_report
    from reports.load import load_results

    out.write_text(build_report(load_results([d]), []))
    page = out.read_text()
    assert "columns were missing" in page
    assert "speedup_vs_ar" in page


def test_text_from_the_results_is_escaped(tmp_path):
    """Method names and settings come from a Parquet anyone can write: they never become markup."""
    evil = '<img src=x onerror="alert(1)">'
    d = tmp_path / "evil"
    d.mkdir()
    table = pa.table({
        "cell_id": ["a", "b"], "status": ["ok", "ok"], "method": ["ar", evil],
        "dataset": ["gsm8k", "gsm8k"], "batch_size": [1, 1], "temperature": [0.0, 0.0],
        "tau": [1.0, 2.5], "tokens_per_s": [10.0, 18.0], "speedup_vs_ar": [1.0, 1.8],
        "top_k_setting": [None, "<b>4</b>"],
    })
    pq.write_table(table, d / "results.parquet")
    from reports.html import build_report
    from reports.load import load_results

    page = build_report(load_results([d]), [])
    assert evil not in page and "<img src=x" not in page and "<b>4</b>" not in page
    assert "&lt;img src=x" in page
