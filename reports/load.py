"""Read sweep results directories and roofline profiles into plain pandas objects.

Everything downstream (tables, figures) works on the frames returned here, so this is
the one place that knows about files, bad input and schema drift. A results file from
an older or newer harness may lack columns: they are added as nulls and listed in
`Results.missing_columns`, so the report says what it could not show instead of crashing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from workloads.errors import ScyllaError

RESULTS_FILE = "results.parquet"
PROFILE_FILE = "profile.json"

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
    "pretrain_tokens": "Int64",
    "dataset": "string",
    "dataset_source": "string",
    "dataset_checksum": "string",
    "batch_size": "Int64",
    "top_k": "Int64",
    "top_k_setting": "string",
    "depth": "Int64",
    "total_tokens": "Int64",
    "temperature": "float64",
    "max_new_tokens": "Int64",
    "n_prompts": "Int64",
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
    "started_at": "object",
    "duration_s": "float64",
}


@dataclass
class Results:
    """All cells of one or more results directories (a `results_dir` column says which)."""

    cells: pd.DataFrame
    dirs: list[Path]
    missing_columns: list[str] = field(default_factory=list)

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

    path: Path
    doc: dict
    tables: dict[str, pd.DataFrame]

    @property
    def name(self) -> str:
        dev = self.doc.get("device")
        if isinstance(dev, dict):
            for key in ("name", "model", "cpu_model", "gpu_name"):
                if dev.get(key):
                    return str(dev[key])
        if isinstance(dev, str) and dev:
            return dev
        return self.path.name


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as err:
        # pyarrow's messages are multi-line at times; the CLI prints exactly one line.
        reason = " ".join(str(err).split())[:200]
        raise ScyllaError(f"cannot read {path}: not a valid Parquet file ({reason})") from None
    return table.to_pandas()


def _results_frame(directory: Path) -> pd.DataFrame:
    if not directory.exists():
        raise ScyllaError(f"results directory not found: {directory}")
    if not directory.is_dir():
        raise ScyllaError(f"not a directory: {directory} (give the folder that `scylla sweep --out` wrote)")
    consolidated = directory / RESULTS_FILE
    if consolidated.is_file():
        return _read_parquet(consolidated)
    # A sweep that is still running (or was killed) has per-cell files but no
    # consolidated table yet; reading those lets a report show partial results.
    parts = sorted(p for p in directory.rglob("*.parquet") if p.name not in ("steps.parquet", "outputs.parquet"))
    parts = [p for p in parts if "steps" not in p.parts and "outputs" not in p.parts]
    if not parts:
        raise ScyllaError(f"no {RESULTS_FILE} in {directory} (is it a `scylla sweep --out` folder?)")
    frames = [_read_parquet(p) for p in parts]
    frames = [f for f in frames if "cell_id" in f.columns]
    if not frames:
        raise ScyllaError(f"no {RESULTS_FILE} in {directory}, and no per-cell result files either")
    return pd.concat(frames, ignore_index=True).drop_duplicates("cell_id", keep="last")


def _conform(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Add missing expected columns as typed nulls; return the frame and what was missing."""
    missing = [c for c in EXPECTED_COLUMNS if c not in df.columns]
    for col in missing:
        df[col] = pd.Series([None] * len(df), dtype=EXPECTED_COLUMNS[col], index=df.index)
    if df["status"].isna().any():
        # A row without a status came from a writer that only records finished cells.
        df["status"] = df["status"].fillna("ok")
    df["method"] = df["method"].fillna("unknown")
    df["dataset"] = df["dataset"].fillna("unknown")
    # The integer columns are where pandas and Parquet disagree most (int64 vs a float
    # with NaN); nullable Int64 keeps grouping keys exact.
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
    frames, paths = [], []
    for d in dirs:
        path = Path(d)
        df = _results_frame(path)
        df["results_dir"] = str(path)
        frames.append(df)
        paths.append(path)
    cells = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    cells, missing = _conform(cells)
    if cells.empty:
        raise ScyllaError(f"{', '.join(map(str, paths))}: the results table has no rows")
    return Results(cells=cells.reset_index(drop=True), dirs=paths, missing_columns=missing)


def _finite(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def load_profile(directory: str | Path) -> Profile:
    """Read `DIR/profile.json` and every Parquet table beside it (keyed by file stem)."""
    path = Path(directory)
    if not path.exists():
        raise ScyllaError(f"profile directory not found: {path}")
    doc_path = path / PROFILE_FILE if path.is_dir() else path
    if not doc_path.is_file():
        raise ScyllaError(f"no {PROFILE_FILE} in {path} (is it a `scylla profile --out` folder?)")
    try:
        doc = json.loads(doc_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ScyllaError(f"cannot read {doc_path}: {' '.join(str(err).split())}") from None
    if not isinstance(doc, dict):
        raise ScyllaError(f"{doc_path}: expected a JSON object")
    tables = {p.stem: _read_parquet(p) for p in sorted(doc_path.parent.glob("*.parquet"))}
    return Profile(path=doc_path.parent, doc=doc, tables=tables)


def number(doc: dict, *keys: str) -> float | None:
    """A finite number at a nested key path, or None (profiles may omit what they could not measure)."""
    cur: object = doc
    for k in keys:
        if not isinstance(cur, dict) or k not in cur:
            return None
        cur = cur[k]
    if isinstance(cur, dict):
        for k in ("value", "measured", "best"):
            if k in cur:
                return _finite(cur[k])
        return None
    return _finite(cur)
