"""Per-cell Parquet storage: atomic writes, one writer, consolidation, derived columns."""

import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness import storage
from harness.cells import plan
from harness.runner import base_row, derive
from harness.schema import OUTPUT_SCHEMA, RESULT_COLUMNS, RESULT_SCHEMA, SCHEMA_VERSION
from harness.spec import SweepSpec
from harness.storage import ResultStore, atomic_write_table
from workloads.errors import ScyllaError


def small_table(v: int) -> pa.Table:
    return pa.table({"x": list(range(v))})


def test_atomic_write_never_leaves_a_torn_file(tmp_path, monkeypatch):
    path = tmp_path / "t.parquet"
    atomic_write_table(small_table(3), path)
    real = pq.write_table

    def half_then_die(table, where, **kw):
        Path(where).write_bytes(b"PAR1 torn")  # a partial file at the temporary name
        raise OSError("disk full")

    monkeypatch.setattr(storage.pq, "write_table", half_then_die)
    with pytest.raises(OSError):
        atomic_write_table(small_table(10), path)
    monkeypatch.setattr(storage.pq, "write_table", real)
    assert pq.read_table(path).num_rows == 3  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]  # temporary removed


def test_write_goes_through_a_temporary_and_rename(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((Path(src).name, Path(dst).name, Path(dst).exists()))
        real_replace(src, dst)

    monkeypatch.setattr(storage.os, "replace", spy)
    atomic_write_table(small_table(2), tmp_path / "a.parquet")
    (src, dst, existed), = seen
    assert re.fullmatch(r"\.a\.parquet\.\d+\.tmp", src) and dst == "a.parquet" and not existed


def test_prepare_removes_stale_temporaries(tmp_path):
    store = ResultStore(tmp_path / "out")
    store.prepare()
    stale = store.cells_dir / ".abc.parquet.123.tmp"
    stale.write_bytes(b"junk")
    theirs = [store.out / ".notes.tmp", store.out / ".draft.tmp", store.cells_dir / "keep.tmp"]
    for path in theirs:
        path.write_text("the user's")
    store.prepare()
    assert not stale.exists()
    assert all(path.read_text() == "the user's" for path in theirs)  # only names our writes use


def test_a_corrupt_cell_file_is_set_aside_with_a_warning(tmp_path, capsys):
    (c, *_) = plan(spec())
    store = ResultStore(tmp_path)
    store.prepare()
    store.row_path(c.cell_id).write_bytes(b"PAR1 not really")
    assert store.done() == {}
    assert store.row_path(c.cell_id).with_suffix(".corrupt").read_bytes() == b"PAR1 not really"
    err = capsys.readouterr().err
    assert "unreadable" in err and "runs again" in err


def test_a_results_file_without_cells_is_not_overwritten(tmp_path, shared_eval_dir):
    from harness.runner import run_sweep

    out = tmp_path / "out"
    out.mkdir()
    (out / "results.parquet").write_bytes(b"results of another tool or an older run")
    with pytest.raises(ScyllaError, match="already holds sweep results; pass --resume"):
        run_sweep(spec(), out)
    assert (out / "results.parquet").read_bytes() == b"results of another tool or an older run"
    assert sorted(p.name for p in out.iterdir()) == ["results.parquet"]  # no skeleton either


def test_one_writer_at_a_time(tmp_path):
    a, b = ResultStore(tmp_path), ResultStore(tmp_path)
    with a.locked(), pytest.raises(ScyllaError, match=r"being written by another sweep \(pid \d+\)"), b.locked():
        pass
    with b.locked():  # released
        pass


def spec() -> SweepSpec:
    return SweepSpec(methods=("ar", "scylla"), draft={"scylla": ("oracle",)}, datasets=("gsm8k",),
                     batch_sizes=(1,), top_k=(4,), depths=(3,), total_tokens=(8,), prompts=2)


def ok_row(cell, tokens_per_s: float) -> dict:
    row = base_row(cell)
    row.update(status="ok", tokens_per_s=tokens_per_s, tau=1.5)
    return row


def outputs(cell, seqs, rivals=None) -> pa.Table:
    return pa.Table.from_pylist(
        [dict(cell_id=cell.cell_id, prompt_id=str(i), turn=0, batch=i, row=0, token_ids=s,
              rivals=rivals and rivals[i]) for i, s in enumerate(seqs)],
        schema=OUTPUT_SCHEMA,
    )


@pytest.mark.parametrize(("spec_tokens", "lossless", "mismatches", "ties"), [
    ([[1, 2, 3], [4, 5]], True, 0, 0),
    ([[1, 2, 3], [4, 9]], False, 1, 0),
    ([[1, 2, 3], [4, 7]], True, 0, 1),  # one of AR's rivals at the token where they part
    ([[1, 2, 3], [9, 7]], False, 1, 0),  # parts a token earlier, where AR had no rival
])
def test_derive_speedup_and_lossless_catches_planted_mismatch(tmp_path, spec_tokens, lossless, mismatches, ties):
    ar, sc = plan(spec())
    assert ar.is_ar and sc.ar_partner == ar.cell_id
    store = ResultStore(tmp_path)
    store.prepare()
    by_id = {ar.cell_id: ar, sc.cell_id: sc}
    # the speculative cell may finish first (another executor, an earlier run): nothing to derive yet
    store.write_cell(ok_row(sc, 30.0), outputs(sc, spec_tokens))
    assert derive(store, sc, by_id)["speedup_vs_ar"] is None
    store.write_cell(ok_row(ar, 20.0),
                     outputs(ar, [[1, 2, 3], [4, 5]], rivals=[[[], [], []], [[], [7, 8]]]))
    derive(store, ar, by_id)
    row = derive(store, sc, by_id)
    assert row["speedup_vs_ar"] == pytest.approx(1.5) and row["ar_tokens_per_s"] == 20.0
    assert row["lossless"] is lossless and row["lossless_mismatches"] == mismatches
    assert row["lossless_near_ties"] == ties
    assert store.read_row(sc.cell_id)["lossless"] is lossless  # persisted
    assert store.read_row(ar.cell_id)["speedup_vs_ar"] == 1.0 and store.read_row(ar.cell_id)["lossless"] is None


def test_consolidate_has_exact_schema_and_no_duplicates(tmp_path):
    cells = plan(spec())
    store = ResultStore(tmp_path)
    store.prepare()
    for c in cells:
        store.write_cell(ok_row(c, 10.0))
    store.write_cell(ok_row(cells[1], 11.0))  # rewritten: still one row
    path = store.consolidate([c.cell_id for c in reversed(cells)])
    t = pq.read_table(path)
    assert t.schema.equals(RESULT_SCHEMA, check_metadata=False)
    assert t.column_names == RESULT_COLUMNS
    assert t.column("cell_id").to_pylist() == [c.cell_id for c in reversed(cells)]
    assert set(t.column("schema_version").to_pylist()) == {SCHEMA_VERSION}
    assert store.done() == {c.cell_id: "ok" for c in cells}


def test_other_schema_version_is_refused(tmp_path):
    (c, *_) = plan(spec())
    store = ResultStore(tmp_path)
    store.prepare()
    row = ok_row(c, 1.0)
    row["schema_version"] = SCHEMA_VERSION + 1
    store.write_cell(row)
    with pytest.raises(ScyllaError, match="schema version"):
        store.done()


def test_docs_name_every_column():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "results-schema.md").read_text()
    assert f"schema_version: {SCHEMA_VERSION}" in doc or f"Schema version {SCHEMA_VERSION}" in doc
    missing = [c for c in RESULT_COLUMNS if f"`{c}`" not in doc]
    assert not missing, f"docs/results-schema.md does not document {missing}"
