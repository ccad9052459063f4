"""What a results folder was measured with, so that a resume never mixes two inputs.

A cell's id hashes its settings (harness/cells.py); the inputs behind those settings are
pinned here, per results folder, in `inputs.json`: each dataset's checksum, each target's
fingerprint, each draft checkpoint's weights hash, and the precision `--dtype` resolved to
(`auto` is timed per model and machine: scylla_impl/target.py, `auto_dtype`). The first sweep
into a folder records them; a resume that reads a different file under the same name (another
`--data-dir`, a retrained draft, other weights at the target's path) or decodes in another
precision is refused before it measures anything.
The dataset checksums are known to the driver before any model loads; the target and draft
are checked by the worker right after loading them.
"""

from __future__ import annotations

import json
from pathlib import Path

from workloads.errors import ScyllaError

INPUTS_FILE = "inputs.json"

# kind -> (what identifies it, the option that chose it)
KINDS = {
    "datasets": ("checksum", "--data-dir"),
    "targets": ("fingerprint", "--target"),
    "drafts": ("weights hash", "--draft"),
    "dtypes": ("precision", "--dtype, or auto deciding differently on this machine"),
}

Inputs = dict[str, dict[str, str]]


class InputsChanged(ScyllaError):
    """A resume would mix results measured on two different inputs; ends the sweep."""


def read_inputs(out: Path) -> Inputs:
    path = Path(out) / INPUTS_FILE
    if not path.exists():
        return {kind: {} for kind in KINDS}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or not all(isinstance(doc.get(k, {}), dict) for k in KINDS):
            raise ValueError("not a mapping of datasets, targets and drafts")
    except (OSError, ValueError) as err:
        raise ScyllaError(f"{path} cannot be read ({err}); it records what this folder was measured with: "
                          "restore it, or write to another --out") from None
    return {kind: {str(k): str(v) for k, v in doc.get(kind, {}).items()} for kind in KINDS}


def check_input(recorded: Inputs, kind: str, name: str, value: str | None, out: Path | str) -> None:
    """Raise InputsChanged if `name` was recorded with another value."""
    before = recorded.get(kind, {}).get(name)
    if value is None or before is None or before == value:
        return
    what, option = KINDS[kind]
    raise InputsChanged(
        f"{out} was measured with {kind[:-1]} {name!r} at {what} {before[:16]}, but this run reads {value[:16]} "
        f"(another {option}, or changed files?); resuming would mix the two in one results file: "
        f"resume with the same inputs, or write to another --out"
    )


def record_input(recorded: Inputs, kind: str, name: str, value: str | None) -> bool:
    """Add `name` -> `value` if new; True when `recorded` changed."""
    if value is None or name in recorded.setdefault(kind, {}):
        return False
    recorded[kind][name] = value
    return True


def inputs_bytes(recorded: Inputs) -> bytes:
    return (json.dumps(recorded, indent=2, sort_keys=True) + "\n").encode()
