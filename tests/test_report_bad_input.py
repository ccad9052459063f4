"""`scylla report` on input it cannot use, as a user meets it: each case ends in one
`error:` line and exit 1, names the file and what is wrong, and writes nothing. And the
one case that is not an error: a sweep killed between consolidations is read from cells/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
RESULTS = FIXTURES / "report_results"
PROFILE = FIXTURES / "report_profile_cpu"


def scylla(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, timeout=300)


def error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def fixture_table() -> pa.Table:
    return pq.read_table(RESULTS / "results.parquet")


def results_dir(tmp_path: Path, table: pa.Table, name: str = "sweep") -> Path:
    d = tmp_path / name
    d.mkdir()
    pq.write_table(table, d / "results.parquet")
    return d


def steps_of(cell_id: str) -> pa.Table:
    from harness.schema import STEP_SCHEMA

    return pa.Table.from_pylist([{"cell_id": cell_id, "turn": 0, "batch": 0, "step": 0, "row": 0, "active": True,
                                  "drafted": 4, "accepted": 2, "emitted": 3, "step_s": 0.01}], schema=STEP_SCHEMA)


def with_column(table: pa.Table, name: str, values: list, type_: pa.DataType) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, pa.array(values, type_))


# ------------------------------------------------------------------ results that are not results


@pytest.mark.parametrize("drop", [["status"], ["cell_id", "method"]])
def test_results_without_a_required_column_are_refused(tmp_path, drop):
    """Without `status` every row used to count as ok: a report of failures shown as successes."""
    d = results_dir(tmp_path, fixture_table().drop_columns(drop))
    out = tmp_path / "r.html"
    msg = error_line(scylla("report", str(d), "-o", str(out)))
    assert str(d / "results.parquet") in msg
    assert all(c in msg for c in drop) and "scylla sweep" in msg
    assert not out.exists()


def test_an_unrelated_parquet_is_refused(tmp_path):
    d = results_dir(tmp_path, pa.table({"name": ["a", "b"], "price": [1.0, 2.0]}))
    msg = error_line(scylla("report", str(d), "-o", str(tmp_path / "r.html")))
    assert "not a sweep results table" in msg and "cell_id, status, method" in msg


def test_a_steps_table_is_named_for_what_it_is(tmp_path):
    pq.write_table(steps_of("a"), tmp_path / "steps.parquet")
    msg = error_line(scylla("report", str(tmp_path / "steps.parquet"), "-o", str(tmp_path / "r.html")))
    assert "per-step table" in msg and "results.parquet" in msg


def test_the_results_file_itself_can_be_given(tmp_path):
    proc = scylla("report", str(RESULTS / "results.parquet"), "-o", str(tmp_path / "r.html"))
    assert proc.returncode == 0, proc.stderr
    assert "255 cells" in proc.stdout


@pytest.mark.parametrize("column, values, type_, words", [
    ("tokens_per_s", lambda v: None if v is None else f"{v:.1f} tok/s", pa.string(), "expected numbers"),
    ("tokens_per_s", lambda v: None if v is None else str(v), pa.string(), "expected numbers"),
    ("batch_size", lambda v: None if v is None else str(v), pa.string(), "expected whole numbers"),
    ("batch_size", lambda v: None if v is None else v + 0.5, pa.float64(), "fractions"),
    ("accept_cond", lambda v: None if v is None else json.dumps(v), pa.string(), "expected lists of numbers"),
    ("status", lambda v: 1, pa.int64(), "expected text"),
], ids=["tokens_per_s-words", "tokens_per_s-numeric-strings", "batch_size-strings", "batch_size-fractions",
        "accept_cond-json-text", "status-numbers"])
def test_a_column_of_the_wrong_type_is_refused(tmp_path, column, values, type_, words):
    """Coercing used to turn these into NaN (or round them): a report with holes and no word why."""
    table = fixture_table()
    table = with_column(table, column, [values(v) for v in table.column(column).to_pylist()], type_)
    d = results_dir(tmp_path, table)
    msg = error_line(scylla("report", str(d), "-o", str(tmp_path / "r.html")))
    assert str(d / "results.parquet") in msg and column in msg and words in msg


@pytest.mark.parametrize("status, words", [(None, "255 empty"), ("done", "unknown 'done'")])
def test_rows_without_a_known_status_are_refused(tmp_path, status, words):
    table = fixture_table()
    d = results_dir(tmp_path, with_column(table, "status", [status] * table.num_rows, pa.string()))
    msg = error_line(scylla("report", str(d), "-o", str(tmp_path / "r.html")))
    assert "column status" in msg and words in msg and "ok, failed, pruned" in msg


# ------------------------------------------------------------------ profiles that are not profiles


def bad_profile(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "prof"
    shutil.copytree(PROFILE, p)
    (p / "profile.json").write_bytes(data)
    return p


def with_device(device) -> bytes:
    doc = json.loads((PROFILE / "profile.json").read_text())
    doc["device"] = device
    return json.dumps(doc).encode()


@pytest.mark.parametrize("data, words", [
    (with_device(["cpu", "Fixture CPU"]), '"device" is a list'),
    (with_device(3), '"device" is a number'),
    (b'{"device": {"name": "x"}, ', "is not valid JSON"),
    ('{"device": {"name": "Caf\u00e9"}}'.encode("latin-1"), "is not UTF-8 text"),
    (b"[1, 2]", "expected a JSON object, found a list"),
], ids=["device-list", "device-number", "truncated-json", "latin-1", "json-list"])
def test_a_bad_profile_is_refused(tmp_path, data, words):
    p = bad_profile(tmp_path, data)
    out = tmp_path / "r.html"
    msg = error_line(scylla("report", str(RESULTS), "--profile", str(p), "-o", str(out)))
    assert str(p / "profile.json") in msg and words in msg and "scylla profile" in msg
    assert not out.exists()


# ------------------------------------------------------------------ a sweep killed between consolidations


def test_cells_newer_than_results_parquet_are_read(tmp_path):
    """The sweep rewrites results.parquet every 10 s from cells/; after a SIGKILL the last
    cells (and rows updated since) are only in cells/, and the report shows them."""
    from harness.storage import ResultStore

    rows = [r for r in fixture_table().to_pylist() if r["status"] == "ok"][:3]
    store = ResultStore(tmp_path / "sweep")
    store.prepare()
    for r in rows:
        store.write_cell(r)
    store.consolidate()
    out = tmp_path / "r.html"

    proc = scylla("report", str(store.out), "-o", str(out))
    assert proc.returncode == 0 and "3 cells" in proc.stdout, proc.stderr
    assert "note:" not in proc.stderr  # a finished sweep: results.parquet is the truth

    # What the sweep did after its last consolidation: one more cell (with its steps file,
    # which is not a row) and one row rewritten with a new number.
    store.write_cell(dict(rows[0], cell_id="feedbeef00000001", tokens_per_s=4321.5),
                     steps=steps_of("feedbeef00000001"))
    store.update_row(rows[1]["cell_id"], tokens_per_s=1234.5)
    stamp = store.results_path.stat().st_mtime_ns - 10**9
    os.utime(store.results_path, ns=(stamp, stamp))  # as if consolidated a second before them

    proc = scylla("report", str(store.out), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "4 cells" in proc.stdout
    notes = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(notes) == 1 and notes[0].startswith("note: ") and "older than its cells/" in notes[0]
    page = out.read_text()
    assert 'data-cell-id="feedbeef00000001"' in page
    assert 'data-col="tokens_per_s">4321.5<' in page and 'data-col="tokens_per_s">1234.5<' in page


def test_cells_without_results_parquet_are_read(tmp_path):
    """Killed before the first consolidation: only cells/, with per-step files beside the rows."""
    from harness.schema import rows_to_table
    from harness.storage import ResultStore

    rows = [r for r in fixture_table().to_pylist() if r["status"] == "ok"][:3]
    store = ResultStore(tmp_path / "sweep")
    store.prepare()
    for r in rows[:2]:
        store.write_cell(r, steps=steps_of(r["cell_id"]))
    # A row from a harness that did not have every column of today's schema yet.
    pq.write_table(rows_to_table([rows[2]]).drop_columns(["gpu_util_median", "power_w_median"]),
                   store.row_path(rows[2]["cell_id"]))
    (store.cells_dir / "0badc0de.parquet").write_bytes(b"PAR1 not a row PAR1")  # damaged by hand
    proc = scylla("report", str(store.out), "-o", str(tmp_path / "r.html"))
    assert proc.returncode == 0, proc.stderr
    assert "3 cells" in proc.stdout and "has no results.parquet yet" in proc.stderr
    assert "skipped 1 unreadable cell file" in proc.stderr and "0badc0de.parquet" in proc.stderr
    assert (store.cells_dir / "0badc0de.parquet").exists()  # a report reads; it moves nothing


# ------------------------------------------------------------------ where the report goes


def test_out_is_a_folder(tmp_path):
    (tmp_path / "reports").mkdir()
    msg = error_line(scylla("report", str(RESULTS), "-o", str(tmp_path / "reports")))
    assert "is a folder" in msg
    assert os.listdir(tmp_path) == ["reports"] and not os.listdir(tmp_path / "reports")


@pytest.mark.parametrize("where", ["parent-missing", "parent-is-a-file"])
def test_out_folder_unusable(tmp_path, where):
    (tmp_path / "notes.txt").write_text("mine")
    parent = tmp_path / ("nope" if where == "parent-missing" else "notes.txt")
    msg = error_line(scylla("report", str(RESULTS), "-o", str(parent / "r.html")))
    assert str(parent) in msg and "choose another -o" in msg
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "mine"


def test_out_is_checked_before_the_results_are_read(tmp_path):
    """A bad -o is found at once, not after minutes of reading and drawing."""
    msg = error_line(scylla("report", str(tmp_path / "no-such-sweep"), "-o", str(tmp_path / "nope" / "r.html")))
    assert "-o" in msg and "does not exist" in msg


def test_out_never_overwrites_a_file_that_is_not_a_report(tmp_path):
    """`-o DIR/results.parquet` by a slip would replace the sweep's results with HTML."""
    d = tmp_path / "sweep"
    shutil.copytree(RESULTS, d)
    before = (d / "results.parquet").read_bytes()
    msg = error_line(scylla("report", str(d), "-o", str(d / "results.parquet")))
    assert "not an HTML page" in msg
    assert (d / "results.parquet").read_bytes() == before


@pytest.mark.parametrize("sub", ["existing", "."])
def test_out_on_a_read_only_disk(read_only_disk, sub):
    target = read_only_disk / sub / "r.html"
    msg = error_line(scylla("report", str(RESULTS), "-o", str(target)))
    assert "is not writable (Read-only file system)" in msg
    assert not target.exists()


def test_out_on_a_full_disk_keeps_the_previous_report(full_disk):
    previous = "<!DOCTYPE html><title>last week's report</title>"
    target = full_disk / "report.html"
    target.write_text(previous)
    msg = error_line(scylla("report", str(RESULTS), "-o", str(target)))
    assert str(target) in msg and "disk is full" in msg
    assert target.read_text() == previous
    assert os.listdir(full_disk) == ["report.html"]  # no temporary file left behind
