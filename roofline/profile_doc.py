"""profile.json, read in one place.

Every reader of a profile folder (the sweep's top_k auto and run record, the bench's dtype
choice, the report) goes through `read_profile_doc`: it checks that the file is a profile of
a schema this code reads, says in one line what to do when it is not, and offers the fields
those readers use as typed properties. The writer and the full field list are in
roofline/profile.py, which stamps `SCHEMA_VERSION` on every document.

A document without `schema_version` is read as version 1: profiles made by hand for a test
or by another tool may leave it out. One that states a version this code does not know is
refused, since its fields may mean something else.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workloads.errors import ScyllaError

SCHEMA_VERSION = 1
PROFILE_FILE = "profile.json"
_HINT = "give the folder `scylla profile --out` wrote"


@dataclass(frozen=True)
class ProfileDoc:
    """One profile.json: its path and its content, whose top-level kinds have been checked."""

    file: Path
    doc: dict[str, Any]

    @property
    def folder(self) -> Path:
        return self.file.parent

    @property
    def profile_id(self) -> str | None:
        return self.doc.get("profile_id") if isinstance(self.doc.get("profile_id"), str) else None

    @property
    def device_name(self) -> str | None:
        device = self.doc.get("device")
        if isinstance(device, dict):
            return str(device["name"]) if device.get("name") else None
        return device or None  # a bare name, as a hand-written profile may give it

    @property
    def dtype(self) -> str | None:
        """The target dtype the profile measured its verify knee in (`profile --dtype`)."""
        options = self.doc.get("options")
        return options.get("dtype") if isinstance(options, dict) else None

    @property
    def knee_tokens(self) -> float | None:
        knee = self.doc.get("knee_tokens")
        ok = isinstance(knee, int | float) and not isinstance(knee, bool) and knee > 0
        return float(knee) if ok else None

    @property
    def knee_dtype(self) -> str | None:
        """The dtype the target ran in while its verify knee was timed."""
        dtype = _mapping(_mapping(self.doc.get("knee")).get("target")).get("dtype")
        return str(dtype) if dtype else None

    @property
    def bandwidth(self) -> dict[str, float]:
        """Bytes/s by streaming kernel (read, copy, triad) of the primary backend."""
        return _positive_numbers(self.doc.get("bandwidth_bytes_per_s"))

    @property
    def peak_bandwidth(self) -> float | None:
        """The roofline's slope: the best streaming kernel's bytes/s."""
        return _positive(self.doc.get("bandwidth_peak_bytes_per_s"))

    @property
    def peak_bandwidth_kernel(self) -> str | None:
        kernel = self.doc.get("bandwidth_peak_kernel")
        return str(kernel) if kernel and self.peak_bandwidth is not None else None

    @property
    def flops(self) -> dict[str, float]:
        """Measured matmul FLOP/s by mode (bfloat16, float16, float32, float32_tf32)."""
        return _positive_numbers(self.doc.get("flops_per_s"))

    @property
    def spec_bandwidth(self) -> float | None:
        """The spec sheet's bytes/s for a recognised GPU; None elsewhere."""
        return _positive(_mapping(self.doc.get("spec")).get("bandwidth_bytes_per_s"))

    @property
    def spec_flops(self) -> dict[str, float]:
        return _positive_numbers(_mapping(self.doc.get("spec")).get("flops_per_s"))

    @property
    def i_crit(self) -> float | None:
        """The measured ridge point, FLOP/byte, in `i_crit_dtype`'s peak."""
        return _positive(_mapping(self.doc.get("i_crit")).get("measured"))

    @property
    def i_crit_spec(self) -> float | None:
        return _positive(_mapping(self.doc.get("i_crit")).get("spec"))

    @property
    def i_crit_dtype(self) -> str | None:
        dtype = _mapping(self.doc.get("i_crit")).get("dtype")
        return str(dtype) if dtype else None

    @property
    def knee_fit(self) -> dict[str, Any]:
        """The profiler's fit of T(b, n) (roofline/knee.py's KneeFit.to_json); {} when none was made."""
        return _mapping(_mapping(self.doc.get("knee")).get("fit"))

    @property
    def topk_policy(self) -> list[dict]:
        """The draft-free knee rule's rows, by batch size (roofline/policy.py's PolicyEntry)."""
        return [r for r in self.doc.get("topk_policy") or [] if isinstance(r, dict)]

    @property
    def unmeasured(self) -> list[dict]:
        return [u for u in self.doc.get("unmeasured") or [] if isinstance(u, dict)]

    def why_unmeasured(self, what: str) -> str | None:
        """The recorded reason the first item starting with `what` was not measured."""
        return next((str(u.get("reason")) for u in self.unmeasured if str(u.get("what", "")).startswith(what)), None)


def read_profile_doc(path: str | Path) -> ProfileDoc:
    """Read `path/profile.json` (or `path` itself when it is the file); bad input is one ScyllaError."""
    path = Path(path)
    if not path.exists():
        raise ScyllaError(f"profile directory not found: {path} (make one with `scylla profile --out DIR`)")
    file = path / PROFILE_FILE if path.is_dir() else path
    if not file.is_file():
        raise ScyllaError(f"no {PROFILE_FILE} in {path} (is it a `scylla profile --out` folder? "
                          f"make one with `scylla profile --out DIR`)")
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as err:
        raise ScyllaError(f"cannot read {file}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise ScyllaError(f"{file} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
                          f"a profile.json is UTF-8 JSON: {_HINT}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise ScyllaError(f"{file} is not a readable profile: {file.name} is not valid JSON ({err.msg} at line "
                          f"{err.lineno} column {err.colno}); {_HINT}") from None
    _check(file, doc)
    return ProfileDoc(file, doc)


def _check(file: Path, doc: object) -> None:
    """The top-level kinds readers rely on; numbers deeper down are read as "not measured" when absent."""
    if not isinstance(doc, dict):
        raise ScyllaError(f"{file}: expected a JSON object, found a {_json_kind(doc)}; {_HINT}")
    version = doc.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise ScyllaError(f"{file}: schema_version {version!r}, but this scylla-bench reads profiles of version "
                          f"{SCHEMA_VERSION}; measure again with `scylla profile --out DIR`")
    device = doc.get("device")
    if device is not None and not isinstance(device, dict | str):
        raise ScyllaError(f"{file}: \"device\" is a {_json_kind(device)}, expected an object of device facts "
                          f"(name, kind, ...); {_HINT}")
    if doc.get("unmeasured") is not None and not isinstance(doc["unmeasured"], list):
        raise ScyllaError(f"{file}: \"unmeasured\" is a {_json_kind(doc['unmeasured'])}, expected a list; {_HINT}")
    policy = doc.get("topk_policy")
    if policy is not None and not (isinstance(policy, list) and all(
            isinstance(r, dict) and all(_is_number(r.get(k)) for k in ("batch_size", "top_k", "total_tokens"))
            for r in policy)):
        raise ScyllaError(f"{file}: \"topk_policy\" must be a list of objects with numeric batch_size, top_k "
                          f"and total_tokens; {_HINT}")


def _mapping(v: object) -> dict:
    return v if isinstance(v, dict) else {}


def _positive(v: object) -> float | None:
    """A measured quantity: a finite number above zero, else None (not measured)."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
        return None
    return float(v)


def _positive_numbers(v: object) -> dict[str, float]:
    return {str(k): x for k, x in ((k, _positive(x)) for k, x in _mapping(v).items()) if x is not None}


def _is_number(v: object) -> bool:
    return v is None or (isinstance(v, int | float) and not isinstance(v, bool))


def _json_kind(v: object) -> str:
    return {dict: "object", list: "list", str: "string", bool: "true/false", type(None): "null"}.get(
        type(v), "number")
