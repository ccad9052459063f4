"""Read sweep results directories and roofline profiles into plain pandas objects.

Everything downstream (tables, figures) works on the frames returned here, so this is
the one place that knows about files, bad input and schema drift. A results file from
an older or newer harness may lack columns: they are added as nulls and listed in
`Results.missing_columns`, so the report says what it could not show instead of crashing.
A file without the columns every row needs (REQUIRED_COLUMNS), or with a column of the
wrong type, is refused: guessing there would give a report that looks right and is not.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from harness.auto_trees_record import RECORD, recorded_choices
from harness.schema import STATUSES
from harness.storage import ResultStore
from roofline.profile_doc import ProfileDoc, read_profile_doc
from workloads.errors import ScyllaError

RESULTS_FILE = "results.parquet"

# Columns the report reads, with the dtype a missing one is filled with. The harness's
# schema (harness/schema.py, docs/results-schema.md) has more; those are kept as they are.
EXPECTED_COLUMNS: dict[str, str] = {
    "schema_version": "Int64",
    "run_id": "string",
    "cell_id": "string",
    "status": "string",
    "error": "string",
    "target": "string",
    "target_fingerprint": "string",
    "method": "string",
    "draft": "string",
    "draft_layers": "Int64",
    "draft_hash": "string",
    "pretrain_tokens": "Int64",
    "draft_input": "string",
    "dataset": "string",
    "dataset_source": "string",
    "dataset_checksum": "string",
    "batch_size": "Int64",
    "top_k": "Int64",
    "top_k_setting": "string",
    "depth": "Int64",
    "total_tokens": "Int64",
    "lookup_tokens": "Int64",
    "temperature": "float64",
    "max_new_tokens": "Int64",
    "n_prompts": "Int64",
    "prompts_truncated": "Int64",
    "dtype": "string",
    "device": "string",
    "device_name": "string",
    "threads": "Int64",
    "profile_id": "string",
    "git_commit": "string",
    "package_versions": "string",
    "chat_template_hash": "string",
    "system_prompt": "string",
    "emitted_tokens": "Int64",
    "verify_steps": "Int64",
    "drafted_nodes": "Int64",
    "tau": "float64",
    "tau_request_mean": "float64",
    "accept_cond": "object",
    "accept_uncond": "object",
    "tokens_per_s": "float64",
    "ar_tokens_per_s": "float64",
    "speedup_vs_ar": "float64",
    "step_time_median_s": "float64",
    "step_time_p90_s": "float64",
    "prefill_s": "float64",
    "decode_s": "float64",
    "peak_memory_bytes": "Int64",
    "lossless": "boolean",
    "lossless_near_ties": "Int64",
    "started_at": "object",
    "duration_s": "float64",
}


@dataclass
class Results:
    """All cells of one or more results directories (a `results_dir` column says which)."""

    cells: pd.DataFrame
    dirs: list[Path]
    missing_columns: list[str] = field(default_factory=list)
    # One line each, for stderr: what was read other than results.parquet, and why.
    notes: list[str] = field(default_factory=list)
    # top_k auto's predictions (each folder's auto_trees.json): one row per (draft, chain,
    # dataset, batch) with the tree chosen and its predicted tokens/s, AR's beside it
    predictions: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def ok(self) -> pd.DataFrame:
        return self.cells[self.cells["status"] == "ok"]

    @property
    def failed(self) -> pd.DataFrame:
        return self.cells[self.cells["status"] == "failed"]

    @property
    def pruned(self) -> pd.DataFrame:
        return self.cells[self.cells["status"] == "pruned"]


@dataclass
class Profile:
    """One roofline profile: the JSON document plus its raw-measurement tables."""

    document: ProfileDoc
    tables: dict[str, pd.DataFrame]

    @property
    def path(self) -> Path:
        return self.document.folder

    @property
    def doc(self) -> dict:
        return self.document.doc

    @property
    def name(self) -> str:
        return self.document.device_name or self.path.name


def _read_table(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as err:
        # pyarrow's messages are multi-line at times; the CLI prints exactly one line.
        reason = " ".join(str(err).split())[:200]
        raise ScyllaError(f"cannot read {path}: not a valid Parquet file ({reason})") from None


def _read_parquet(path: Path) -> pd.DataFrame:
    return _read_table(path).to_pandas()


# Without these a row cannot be placed in the report: which cell, did it finish, which method.
REQUIRED_COLUMNS = ("cell_id", "status", "method")
_WHAT_RESULTS_ARE = "give the folder `scylla sweep --out` wrote, or its results.parquet"
# Column sets of the sweep's other tables, so a wrong file is named for what it is.
_OTHER_TABLES = (
    ({"step", "drafted", "accepted", "step_s"}, "a per-step table (a sweep's steps.parquet)"),
    ({"prompt_id", "token_ids"}, "a table of generated tokens (a sweep's cells/*.outputs.parquet)"),
)
# The report's own reading of "object" columns: token-position acceptance lists and a time.
_OBJECT_KINDS = {"accept_cond": "list", "accept_uncond": "list", "started_at": "time"}


def _kind_ok(kind: str, t: pa.DataType) -> bool:
    if pa.types.is_null(t):  # an all-null column written by pandas
        return True
    if pa.types.is_dictionary(t):
        t = t.value_type
    if kind in ("Int64", "float64"):
        return pa.types.is_integer(t) or pa.types.is_floating(t)
    if kind == "string":
        return pa.types.is_string(t) or pa.types.is_large_string(t)
    if kind == "boolean":
        return pa.types.is_boolean(t)
    if kind == "list":
        if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
            return False
        v = t.value_type
        return pa.types.is_null(v) or pa.types.is_integer(v) or pa.types.is_floating(v)
    if kind == "time":
        return pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_string(t) or pa.types.is_large_string(t)
    return True


_KIND_WORDS = {"Int64": "whole numbers", "float64": "numbers", "string": "text", "boolean": "true/false",
               "list": "lists of numbers", "time": "timestamps"}


def _check_table(table: pa.Table, path: Path) -> None:
    """Refuse a file that is not a results table, or whose columns the report would misread.

    Coercing instead would turn strings into NaN and a missing status into "ok": a report
    that looks complete and is wrong. One line names the file and every problem found."""
    names = set(table.column_names)
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        for marker, what in _OTHER_TABLES:
            if marker <= names:
                raise ScyllaError(f"{path} is {what}, not a results table: {_WHAT_RESULTS_ARE}")
        raise ScyllaError(f"{path} is not a sweep results table: it has no {', '.join(missing)} column"
                          f"{'s' if len(missing) > 1 else ''}; {_WHAT_RESULTS_ARE}")
    wrong = []
    for col in table.column_names:
        kind = _OBJECT_KINDS.get(col) or EXPECTED_COLUMNS.get(col)
        if kind is None:
            continue  # a column the report does not read is kept as it is
        t = table.schema.field(col).type
        if not _kind_ok(kind, t):
            wrong.append(f"{col} holds {t} (expected {_KIND_WORDS[kind]})")
        elif kind == "Int64" and pa.types.is_floating(t):
            vals = pd.Series(table.column(col).to_numpy(zero_copy_only=False), dtype="float64").dropna()
            if not vals.empty and not (vals == vals.round()).all():
                wrong.append(f"{col} holds fractions such as {vals[vals != vals.round()].iloc[0]:g} (expected whole numbers)")
    if wrong:
        raise ScyllaError(f"{path}: wrong column type{'s' if len(wrong) > 1 else ''}: {'; '.join(wrong)}. "
                          "A results.parquet written by `scylla sweep` has the types of harness/schema.py; "
                          "re-run the sweep or fix the file")
    status = table.column("status").to_pylist()
    empty = sum(s is None for s in status)
    unknown = sorted({s for s in status if s is not None and s not in STATUSES})
    if empty or unknown:
        what = [f"{empty} empty" if empty else "", f"unknown {', '.join(map(repr, unknown[:5]))}" if unknown else ""]
        raise ScyllaError(f"{path}: column status has {' and '.join(w for w in what if w)} value(s); "
                          f"every row of a sweep's results is one of {', '.join(STATUSES)}")
    if table.column("cell_id").null_count:
        raise ScyllaError(f"{path}: {table.column('cell_id').null_count} row(s) have no cell_id; "
                          "every row of a sweep's results names its cell")


def _results_file(path: Path) -> pd.DataFrame:
    table = _read_table(path)
    _check_table(table, path)
    return table.to_pandas()


def _cell_rows(files: list[Path], notes: list[str]) -> pd.DataFrame | None:
    """The row files of `directory/cells`, each checked like a results.parquet. Not cast to
    the harness's schema: rows an older harness wrote lack its newer columns, and are kept."""
    frames, bad = [], []
    for p in files:
        try:
            table = pq.read_table(p)
        except (pa.ArrowException, OSError, ValueError):
            bad.append(p)  # consolidation skips such a file too; the sweep re-runs its cell
            continue
        _check_table(table, p)
        frames.append(table.to_pandas())
    if bad:
        notes.append(f"note: skipped {len(bad)} unreadable cell file(s) in {bad[0].parent} (e.g. {bad[0].name})")
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _results_frame(arg: Path, notes: list[str]) -> pd.DataFrame:
    if not arg.exists():
        raise ScyllaError(f"results directory not found: {arg}")
    if arg.is_file() and arg.suffix == ".parquet":
        consolidated = arg
        # Its sweep's cells are the newer truth only for the file the sweep consolidates.
        directory = arg.parent if arg.name == RESULTS_FILE else None
    elif arg.is_dir():
        consolidated, directory = arg / RESULTS_FILE, arg
    else:
        raise ScyllaError(f"not a directory: {arg} ({_WHAT_RESULTS_ARE})")
    rows = ResultStore(directory).row_files() if directory is not None else []
    if not consolidated.is_file():
        if not rows:
            raise ScyllaError(f"no {RESULTS_FILE} in {arg} (is it a `scylla sweep --out` folder?)")
        # A sweep that is running (or was killed) before its first consolidation.
        notes.append(f"note: {arg} has no {RESULTS_FILE} yet (a sweep is running or was interrupted); "
                     f"reading its {len(rows)} cell file(s)")
        df = _cell_rows(rows, notes)
        if df is None:
            raise ScyllaError(f"no {RESULTS_FILE} in {arg}, and none of its cell files could be read")
        return df
    df = _results_file(consolidated)
    if not rows:
        return df
    # The sweep rewrites results.parquet every few seconds from cells/; after a SIGKILL the
    # cells written (or updated with their AR speedup) since then are only in cells/.
    stamp = consolidated.stat().st_mtime_ns
    known = set(df["cell_id"])
    newer = [p for p in rows if p.stem not in known or p.stat().st_mtime_ns > stamp]
    if not newer:
        return df
    notes.append(f"note: {consolidated} is older than its cells/ (a sweep was interrupted or is running); "
                 f"reading {len(newer)} newer cell file(s)")
    fresh = _cell_rows(newer, notes)
    if fresh is None:
        return df
    # Rows only results.parquet has stay: a report never drops a cell it was given.
    return pd.concat([df[~df["cell_id"].isin(set(fresh["cell_id"]))], fresh], ignore_index=True)


def _conform(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Add missing expected columns as typed nulls; return the frame and what was missing."""
    missing = [c for c in EXPECTED_COLUMNS if c not in df.columns]
    for col in missing:
        df[col] = pd.Series([None] * len(df), dtype=EXPECTED_COLUMNS[col], index=df.index)
    df["method"] = df["method"].fillna("unknown")
    df["dataset"] = df["dataset"].fillna("unknown")
    # The integer columns are where pandas and Parquet disagree most (int64 vs a float
    # with NaN); nullable Int64 keeps grouping keys exact. Types were checked on read, so
    # "coerce" only meets the nulls of a column one of several directories lacked.
    for col, dtype in EXPECTED_COLUMNS.items():
        if dtype == "Int64" and df[col].dtype != "Int64":
            df[col] = pd.to_numeric(df[col], errors="coerce").round().astype("Int64")
        elif dtype == "float64":
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    return df, missing


def load_results(dirs: list[str | Path]) -> Results:
    """Read one or more results directories. Bad input raises ScyllaError (one line)."""
    if not dirs:
        raise ScyllaError("give at least one results directory")
    frames, paths, notes = [], [], []
    for d in dirs:
        path = Path(d)
        df = _results_frame(path, notes)
        df["results_dir"] = str(path)
        frames.append(df)
        paths.append(path)
    cells = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    cells, missing = _conform(cells)
    if cells.empty:
        raise ScyllaError(f"{', '.join(map(str, paths))}: the results table has no rows")
    predictions = pd.DataFrame([row for path in paths for row in _auto_predictions(path, notes)])
    return Results(cells=cells.reset_index(drop=True), dirs=paths, missing_columns=missing, notes=notes,
                   predictions=predictions)


def _auto_predictions(path: Path, notes: list[str]) -> list[dict]:
    """Rows of DIR/auto_trees.json's choices; none (and a note) where it is absent or unreadable."""
    file = path / RECORD
    if not file.is_file():
        return []
    try:
        rows = []
        for r in recorded_choices(json.loads(file.read_text())):
            if r.dataset is None or r.ar is None:
                continue
            low, high = (r.spread.speedup[0], r.spread.speedup[-1]) if r.spread else (math.nan, math.nan)
            rows.append({"results_dir": str(path), "draft": r.draft, "lookup_tokens": r.lookup_tokens,
                         "dataset": r.dataset, "batch_size": r.batch_size, "top_k": r.choice.top_k,
                         "depth": r.choice.depth, "total_tokens": r.choice.total_tokens,
                         "predicted_tau": 1 + r.choice.accepted,
                         "predicted_speedup": r.speedup,
                         "predicted_speedup_low": low, "predicted_speedup_high": high,
                         "predicted_occupancy": r.choice.occupancy, "predicted_step_s": r.choice.step_s})
        return rows
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError, ZeroDivisionError) as err:
        notes.append(f"{file}: not read ({type(err).__name__}: {err}); the report leaves out auto's predictions")
        return []


def _finite(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def load_profile(directory: str | Path) -> Profile:
    """Read `DIR/profile.json` (roofline/profile_doc.py) and every Parquet table beside it (keyed by file stem)."""
    profile = read_profile_doc(directory)
    tables = {p.stem: _read_parquet(p) for p in sorted(profile.folder.glob("*.parquet"))}
    return Profile(profile, tables)


def number(doc: dict, *keys: str) -> float | None:
    """A finite number at a nested key path, or None (profiles may omit what they could not measure)."""
    cur: object = doc
    for k in keys:
        if not isinstance(cur, dict) or k not in cur:
            return None
        cur = cur[k]
    return _finite(cur)
