"""profile.json: its schema, written in one place and read in one place.

`ProfileRecord` is the document `scylla profile` (roofline/profile.py) fills phase by phase
and writes: one typed field per top-level key, its units and meaning beside it. Every reader
of a profile folder (the sweep's top_k auto and run record, the bench's dtype choice, the
report, the roofline figure) goes through `read_profile_doc`: it checks that the file is a
profile of a schema this code reads, says in one line what to do when it is not, and offers
the fields those readers use as typed properties.

A document without `schema_version` is read as version 1: profiles made by hand for a test
or by another tool may leave it out. One that states a version this code does not know is
refused, since its fields may mean something else.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workloads.errors import ScyllaError

SCHEMA_VERSION = 1
PROFILE_FILE = "profile.json"
_HINT = "give the folder `scylla profile --out` wrote"


@dataclass
class ICrit:
    """The roofline's ridge point: FLOP/s over bytes/s, where a forward turns compute-bound."""

    dtype: str  # the target dtype the profile quotes I_crit for
    measured: float | None  # measured peak FLOP/s of `dtype` / measured peak bandwidth
    spec: float | None  # the same from the datasheet (recognised GPUs only)
    nvml_derived: float | None  # from NVML's clocks, bus width and SM count
    measured_per_dtype: dict[str, float]  # every measured matmul mode
    spec_per_dtype: dict[str, float]
    bandwidth_bytes_per_s: float | None  # the measured slope used
    units: str = "FLOP/byte"


@dataclass
class Knee:
    """The verify knee: one target forward of b rows x n tree tokens over a real cached prefix."""

    target: dict[str, Any]  # name, fingerprint, dtype, num_layers, hidden_size, vocab_size
    prefix_tokens: int
    grid: list[list[int]]  # [b, n] planned
    skipped: list[list[int]]  # [b, n] left out when the knee budget ran out
    clock: str
    fit: dict[str, Any]  # roofline/knee.py's KneeFit.to_json(): knee_tokens, t0_s, per_row_s, per_token_s, ...
    points: list[dict[str, Any]]  # {batch_size, tokens, seconds} medians: the latency curve top_k auto prices trees with


@dataclass(slots=True)
class ProfileRecord:
    """What `scylla profile` writes, before its id and version are stamped. Units: bytes,
    seconds, FLOP; None (null) = not measured, with the reason in `unmeasured`."""

    created_utc: str  # ISO 8601
    options: dict[str, Any]  # device, target, dtype, quick, depth, plan (and dtype_requested when auto)
    device: dict[str, Any]  # device_facts.DeviceFacts.to_json(): kind, name, cpu, gpu, software, ...
    machine_load: dict[str, Any]  # loadavg_start, loadavg_end ([1m, 5m, 15m] | None), cpus_available
    # Streaming kernels (read, copy, triad) of the primary backend: best median over buffers
    # >= 4x the LLC, verified results only.
    bandwidth_bytes_per_s: dict[str, float] = field(default_factory=dict)
    bandwidth_backend: str | None = None  # "triton" | "torch"
    bandwidth_by_backend: dict[str, dict[str, float]] = field(default_factory=dict)
    bandwidth_peak_bytes_per_s: float | None = None  # max over kernels: the roofline's slope
    bandwidth_peak_kernel: str | None = None
    numpy_triad: dict[str, Any] | None = None  # bandwidth.TriadCrossCheck.to_json() (CPU only)
    flops_per_s: dict[str, float] = field(default_factory=dict)  # bfloat16, float16, float32, float32_tf32
    best_matmul: dict[str, dict[str, Any]] = field(default_factory=dict)  # mode: {m, n, k, layout, seconds}
    spec: dict[str, Any] | None = None  # spec_sheet.SpecEntry.to_json() for a recognised GPU
    nvml_derived: dict[str, Any] | None = None  # {bandwidth_bytes_per_s, flops_per_s: {mode}} from NVML
    i_crit: ICrit | None = None
    # Floor of the fitted knee (>= 1): the most tokens in flight per verify forward (policy.py's rule).
    knee_tokens: int | None = None
    knee: Knee | None = None
    # The draft-free knee rule per batch size 1..64 (policy.PolicyEntry.to_json()); [] without a knee.
    # Sweeps' top_k auto prices trees with a draft's measured acceptance instead.
    topk_policy: list[dict[str, Any]] = field(default_factory=list)
    topk_policy_rule: dict[str, Any] = field(default_factory=dict)  # formula, constants, depth
    nvml: dict[str, Any] = field(default_factory=dict)  # NvmlSampler.summary(): <field>_mean/_max per counter
    phase_seconds: dict[str, float] = field(default_factory=dict)  # bandwidth, compute, i_crit, knee, policy, total
    tables: dict[str, str] = field(default_factory=dict)  # name: Parquet file, one row per timed repetition
    figures: list[str] = field(default_factory=list)  # roofline.png, roofline.svg
    unmeasured: list[dict[str, str]] = field(default_factory=list)  # {what, reason}: every null above, and why

    def to_json(self) -> dict[str, Any]:
        """The document, stamped with its version and `profile_id`: the sha256 of its content."""
        body = _finite(asdict(self))
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return {"schema_version": SCHEMA_VERSION, "profile_id": digest, **body}


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: they become null (not measured)."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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
