"""Results on disk: one Parquet file per cell, written atomically, consolidated on demand.

Layout of a results folder:

    DIR/spec.yaml                      the spec of the latest invocation
    DIR/runs/<run_id>.json             environment and spec of each invocation
    DIR/cells/<cell_id>.parquet        one results row (written last: it marks the cell done)
    DIR/cells/<cell_id>.outputs.parquet  generated token ids (for the lossless check)
    DIR/cells/<cell_id>.steps.parquet  per-step counters (with step_table)
    DIR/results.parquet                all rows, consolidated
    DIR/steps.parquet                  all per-step rows, consolidated (with step_table)

Every file is written to a hidden temporary name in the same folder, flushed to disk and
renamed over its final name, so a reader (or a sweep killed by SIGKILL at any instant)
sees either the whole old file or the whole new one, never a torn one. A cell is done
when its row file exists, and there is exactly one row file per cell id, so a killed and
re-run sweep can neither lose a finished cell nor duplicate one. One sweep at a time may
write a folder (an advisory lock, released by the OS even on SIGKILL).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from harness.schema import (
    OUTPUT_SCHEMA,
    RESULT_COLUMNS,
    RESULT_SCHEMA,
    SCHEMA_VERSION,
    STEP_SCHEMA,
    rows_to_table,
)
from workloads.errors import ScyllaError
from workloads.files import TMP_SUFFIX, atomic_write, atomic_write_bytes, check_writable_folder

_OUR_TMP = re.compile(r"\..+\.\d+\.tmp")  # .<name>.<pid>.tmp, as workloads.files.temporary_name names them


def atomic_write_table(table: pa.Table, path: Path) -> None:
    """Write a Parquet file whole or not at all (workloads.files.atomic_write)."""
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


@dataclass(frozen=True)
class Reference:
    """One request's tokens as a cell's outputs file holds them; an AR cell at T=0 also keeps,
    per token, its rivals: the tokens within rounding of it (scylla_impl/decode.py; else None)."""

    token_ids: Sequence[int]
    rivals: Sequence[Sequence[int]] | None = None


class ResultStore:
    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.cells_dir = self.out / "cells"
        self.runs_dir = self.out / "runs"
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ paths

    def row_path(self, cell_id: str) -> Path:
        return self.cells_dir / f"{cell_id}.parquet"

    def outputs_path(self, cell_id: str) -> Path:
        return self.cells_dir / f"{cell_id}.outputs.parquet"

    def steps_path(self, cell_id: str) -> Path:
        return self.cells_dir / f"{cell_id}.steps.parquet"

    @property
    def results_path(self) -> Path:
        return self.out / "results.parquet"

    @property
    def step_table_path(self) -> Path:
        return self.out / "steps.parquet"

    # ------------------------------------------------------------------ setup

    def check_out(self) -> None:
        """The results folder can be written: a folder (or nothing yet) under a writable parent."""
        check_writable_folder(self.out, "--out")

    def prepare(self) -> None:
        """Create the folders and remove temporaries a killed writer of ours left behind (only
        names of the form atomic writes use: .<file>.<pid>.tmp; nothing else of the user's)."""
        self.check_out()
        self.cells_dir.mkdir(parents=True, exist_ok=True)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        for d in (self.out, self.cells_dir):
            for p in d.glob(f".*{TMP_SUFFIX}"):
                if _OUR_TMP.fullmatch(p.name):
                    with contextlib.suppress(OSError):
                        p.unlink()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's advisory lock for the duration (one writer at a time)."""
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = f" (pid {int(os.pread(fd, 32, 0).decode().strip())})"
            os.close(fd)
            raise ScyllaError(f"{self.out} is being written by another sweep{holder}; wait for it or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd
        try:
            yield
        finally:
            self._lock_fd = None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # ------------------------------------------------------------------ cells

    def row_files(self) -> list[Path]:
        if not self.cells_dir.is_dir():
            return []
        return sorted(p for p in self.cells_dir.glob("*.parquet") if p.name.count(".") == 1)

    def has_results(self) -> bool:
        return bool(self.row_files()) or self.results_path.exists()

    def read_row(self, cell_id: str) -> dict[str, Any]:
        return _read_rows(self.row_path(cell_id))[0]

    def done(self) -> dict[str, str]:
        """cell_id -> status of every cell with a row file. Checks the schema version."""
        out: dict[str, str] = {}
        for p in self.row_files():
            try:
                t = pq.read_table(p, columns=["schema_version", "cell_id", "status"])
            except Exception:
                # Cannot happen through atomic writes; keep the bytes aside, re-run the cell.
                os.replace(p, p.with_suffix(".corrupt"))
                print(f"warning: cell file {p} is unreadable: kept as {p.with_suffix('.corrupt').name}; "
                      "the cell runs again", file=sys.stderr, flush=True)
                continue
            for version, cid, status in zip(*(t.column(c).to_pylist() for c in t.column_names)):
                if version != SCHEMA_VERSION:
                    raise ScyllaError(
                        f"{self.out} holds results of schema version {version}; this is version "
                        f"{SCHEMA_VERSION}: write to another --out"
                    )
                out[cid] = status
        return out

    def write_cell(self, row: dict[str, Any], outputs: pa.Table | None = None, steps: pa.Table | None = None) -> None:
        """Outputs and steps first, the row last: the row's presence means the cell is complete."""
        cid = row["cell_id"]
        if outputs is not None:
            atomic_write_table(outputs.cast(OUTPUT_SCHEMA), self.outputs_path(cid))
        if steps is not None:
            atomic_write_table(steps.cast(STEP_SCHEMA), self.steps_path(cid))
        atomic_write_table(rows_to_table([row]), self.row_path(cid))

    def update_row(self, cell_id: str, **changes: Any) -> dict[str, Any]:
        row = self.read_row(cell_id)
        row.update(changes)
        atomic_write_table(rows_to_table([row]), self.row_path(cell_id))
        return row

    def read_outputs(self, cell_id: str) -> dict[tuple[str, int], Reference] | None:
        """(prompt id, turn) -> the tokens, with AR's rivals where recorded."""
        p = self.outputs_path(cell_id)
        if not p.exists():
            return None
        t = pq.read_table(p).cast(OUTPUT_SCHEMA)
        return {
            (pid, turn): Reference(ids, rivals)
            for pid, turn, ids, rivals in zip(*(t.column(name).to_pylist() for name in (
                "prompt_id", "turn", "token_ids", "rivals")))
        }

    def write_run(self, run_id: str, info: dict[str, Any]) -> None:
        atomic_write_bytes(json.dumps(info, indent=2, default=str).encode(), self.runs_dir / f"{run_id}.json")

    # ------------------------------------------------------------------ consolidation

    def consolidate(self, order: list[str] | None = None) -> Path:
        """Write results.parquet (and steps.parquet) from the cell files; `order` = cell ids first."""
        tables = []
        for p in self.row_files():
            try:
                tables.append(pq.read_table(p).select(RESULT_COLUMNS).cast(RESULT_SCHEMA))
            except Exception:
                continue  # skipped here; `done()` sets such a file aside and the cell re-runs
        table = pa.concat_tables(tables) if tables else RESULT_SCHEMA.empty_table()
        if order and table.num_rows:
            rank = {cid: i for i, cid in enumerate(order)}
            ids = table.column("cell_id").to_pylist()
            idx = sorted(range(len(ids)), key=lambda i: (rank.get(ids[i], len(rank)), ids[i]))
            table = table.take(pa.array(idx, type=pa.int64()))
        atomic_write_table(table, self.results_path)
        # Only steps of finished cells: a cell killed between its steps and its row re-runs.
        finished = set(table.column("cell_id").to_pylist())
        step_files = [self.steps_path(cid) for cid in sorted(finished) if self.steps_path(cid).exists()]
        if step_files:
            steps = pa.concat_tables([pq.read_table(p).cast(STEP_SCHEMA) for p in step_files])
            atomic_write_table(steps, self.step_table_path)
        return self.results_path


def _read_rows(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).select(RESULT_COLUMNS).cast(RESULT_SCHEMA).to_pylist()
