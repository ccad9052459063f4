"""NVML access that never raises: every query returns a value or the reason it has none.

NVML (through `pynvml`, from nvidia-ml-py) is optional everywhere in scylla-bench: a CPU
machine has no driver, a container may hide the library, a counter may need root. Callers
record the reason beside the missing value instead of failing, so a profile or a run on
such a machine still completes and says what it could not read.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_lock = threading.Lock()
_state: dict[str, Any] = {"module": None, "reason": None, "opened": False}


@dataclass(frozen=True)
class Reading:
    """One NVML query: `value`, or None with `reason` saying why."""

    value: Any
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def _describe(err: BaseException) -> str:
    # pynvml's error classes carry the NVML status name (e.g. NVMLError_NoPermission);
    # that name is more useful in a JSON report than the bare message.
    name = type(err).__name__
    text = str(err).strip()
    return f"{name}: {text}" if text and text != name else name


def open_nvml() -> tuple[Any | None, str | None]:
    """(pynvml module initialised, None) or (None, reason). Initialised once per process."""
    with _lock:
        if _state["opened"]:
            return _state["module"], _state["reason"]
        _state["opened"] = True
        try:
            import pynvml
        except ImportError as err:
            _state["reason"] = f"pynvml not importable ({err}); install nvidia-ml-py"
            return None, _state["reason"]
        try:
            pynvml.nvmlInit()
        except Exception as err:  # NVMLError_LibraryNotFound / DriverNotLoaded / NoPermission ...
            _state["reason"] = f"NVML unavailable: {_describe(err)}"
            return None, _state["reason"]
        _state["module"] = pynvml
        return pynvml, None


def query(fn: Callable[..., Any], *args: Any) -> Reading:
    """Call one NVML function; a failure becomes a Reading with the reason."""
    try:
        value = fn(*args)
    except Exception as err:
        return Reading(None, _describe(err))
    if isinstance(value, bytes):  # older pynvml returns C strings as bytes
        value = value.decode(errors="replace")
    return Reading(value)


def first_available(nvml: Any, names: tuple[str, ...], *args: Any) -> Reading:
    """Query the first function of `names` this pynvml has (NVML renames APIs across releases)."""
    for name in names:
        fn = getattr(nvml, name, None)
        if fn is not None:
            return query(fn, *args)
    return Reading(None, f"this pynvml has none of {', '.join(names)}")


def handle_for_torch_device(nvml: Any, index: int) -> Reading:
    """The NVML handle of torch's CUDA device `index`.

    CUDA_VISIBLE_DEVICES renumbers devices for CUDA but not for NVML, so match by UUID
    (or PCI bus id) when torch exposes it and fall back to the index only as a last resort.
    """
    try:
        import torch

        props = torch.cuda.get_device_properties(index)
    except Exception as err:
        return Reading(None, f"torch cannot describe cuda:{index}: {_describe(err)}")
    uuid = getattr(props, "uuid", None)
    if uuid is not None:
        text = str(uuid)
        for candidate in (text, f"GPU-{text}"):
            found = query(nvml.nvmlDeviceGetHandleByUUID, candidate)
            if found.ok:
                return found
    bus = getattr(props, "pci_bus_id", None)
    domain = getattr(props, "pci_domain_id", None)
    device = getattr(props, "pci_device_id", None)
    if None not in (bus, domain, device):
        found = query(nvml.nvmlDeviceGetHandleByPciBusId, f"{domain:08x}:{bus:02x}:{device:02x}.0")
        if found.ok:
            return found
    return query(nvml.nvmlDeviceGetHandleByIndex, index)


def decode_clock_event_reasons(nvml: Any, mask: int) -> list[str]:
    """Names of the set bits of a clocks-event (throttle) reason mask, from pynvml's constants."""
    names: dict[int, str] = {}
    for prefix in ("nvmlClocksEventReason", "nvmlClocksThrottleReason"):
        for attr in dir(nvml):
            if not attr.startswith(prefix):
                continue
            short = attr[len(prefix):]
            bit = getattr(nvml, attr)
            # "All"/"None"/"Unknown" are aggregates, not reasons.
            if short in ("All", "None", "Unknown") or not isinstance(bit, int) or bit <= 0:
                continue
            if bit & (bit - 1) == 0:  # single bit only
                names.setdefault(bit, short)
    return [names[bit] for bit in sorted(names) if mask & bit] + [
        f"bit{i}" for i in range(64) if mask & (1 << i) and (1 << i) not in names
    ]
