"""This machine's own bench baselines, kept in SCYLLA_HOME beside the drafts it trained.

The committed baselines (reports/bench_baseline*.json, reports/bench_micro_baseline.json) were
made on one machine. Elsewhere they check little: spec/AR ratios and micro-benchmark times are
what the machine decides, so they are compared only on the committed baseline's kind of machine
(regression.compare, micro_check), and tau only loosely, because the drafts trained here have
other weights. So the first run on a machine that passes the committed check records that
machine's own figures, and later runs check against them instead: tau exactly (the same drafts
and kernels), the ratios within the baseline's tolerance and the micro-benchmarks within
MICRO_SLOWDOWN, on every kind of machine.

A machine's baseline names the committed one it passed (`reference`: that file's sha256). A
commit that refreshes the committed baseline supersedes every machine's: the next run checks
against the committed one again and, if it passes, records anew.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from reports.regression import check_same_sweep, machine, machine_kind
from workloads.cache import scylla_home
from workloads.errors import ScyllaError, os_error
from workloads.files import atomic_write_bytes

FOLDER = "bench-baselines"


def kind_folder(dtype: str) -> Path:
    """SCYLLA_HOME/bench-baselines/<cpu>-<hash>: one folder per kind of machine and precision,
    the same key the committed baseline's ratios are compared by (regression.machine_kind)."""
    kind = dict(machine_kind(machine()), dtype=dtype)
    digest = hashlib.sha256(json.dumps(kind, sort_keys=True).encode()).hexdigest()[:12]
    cpu = re.sub(r"[^a-z0-9]+", "-", str(kind["cpu"]).lower()).strip("-")[:40] or "cpu"
    return scylla_home() / FOLDER / f"{cpu}-{digest}"


def sweep_path(preset: str, dtype: str) -> Path:
    return kind_folder(dtype) / f"{preset}.json"


def micro_path(dtype: str) -> Path:
    return kind_folder(dtype) / "micro.json"


def reference(committed: Path) -> str | None:
    return hashlib.sha256(committed.read_bytes()).hexdigest() if committed.is_file() else None


@dataclass(frozen=True)
class Choice:
    """The baseline a run checks against: this machine's own where it holds, else the committed."""

    path: Path
    own: Path | None  # this machine's file (None where --baseline named one: then none applies)
    is_own: bool
    why_not_own: str | None = None  # why an existing own baseline is not used

    @property
    def records(self) -> bool:
        """Whether a passing run records this machine's baseline (none yet, or a superseded one)."""
        return self.own is not None and not self.is_own


def choose(own: Path | None, committed: Path, sweep: dict | None = None, read_own: bool = True) -> Choice:
    """This machine's baseline `own` if it exists, reads, passed the committed baseline as it
    is now, and (for a sweep baseline) measured the sweep `sweep`; else `committed`. A run
    that rewrites `own` (`read_own` False) checks against `committed`, as a first run does."""
    if own is None or not own.is_file() or not read_own:
        return Choice(committed, own, False)
    try:
        doc = json.loads(own.read_text())
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        return Choice(committed, own, False, f"this machine's baseline {own} does not read ({' '.join(str(err).split())})")
    if doc.get("reference") != reference(committed):
        return Choice(committed, own, False, f"this machine's baseline {own} passed another {committed.name} than "
                                             "the repository's now")
    if sweep is not None:
        try:
            check_same_sweep(sweep, doc)
        except ScyllaError:
            return Choice(committed, own, False, f"this machine's baseline {own} measured another sweep")
    return Choice(own, own, True)


def record(doc: dict, own: Path, committed: Path) -> None:
    """Write `doc` (a sweep baseline, or pytest-benchmark's JSON) as this machine's, naming the
    committed baseline it passed."""
    try:
        own.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise os_error(err, "write", own.parent) from None
    atomic_write_bytes((json.dumps(dict(doc, reference=reference(committed)), indent=1) + "\n").encode(), own)
