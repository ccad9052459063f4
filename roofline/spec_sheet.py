"""Theoretical peaks from vendor datasheets, kept beside the measured numbers, never instead.

`spec_sheets.json` (next to this file) lists dense peaks of common NVIDIA GPUs. A device
is matched by name (first pattern wins). From a matched entry and NVML's real clocks we
also derive "NVML-derived" peaks: the datasheet compute scaled by this board's SM count
and maximum SM clock, and the memory bandwidth from bus width x memory clock x 2 (NVML
reports half the effective data rate for both HBM and GDDR).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SPEC_FILE = Path(__file__).with_name("spec_sheets.json")


@dataclass(frozen=True)
class SpecEntry:
    name: str
    pattern: str
    bandwidth_bytes_per_s: float
    flops_per_s: dict[str, float | None]
    sms: int | None
    boost_clock_mhz: float | None
    source: str

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "bandwidth_bytes_per_s": self.bandwidth_bytes_per_s,
            "flops_per_s": dict(self.flops_per_s),
            "sms": self.sms,
            "boost_clock_mhz": self.boost_clock_mhz,
            "source": self.source,
        }


@cache
def spec_entries() -> tuple[SpecEntry, ...]:
    doc = json.loads(SPEC_FILE.read_text())
    return tuple(SpecEntry(**entry) for entry in doc["gpus"])


def match_spec(device_name: str | None) -> SpecEntry | None:
    """The datasheet entry for a device name as NVML or torch spell it, or None (CPUs, unknown GPUs)."""
    if not device_name:
        return None
    for entry in spec_entries():
        if re.search(entry.pattern, device_name, re.IGNORECASE):
            return entry
    return None


def nvml_bandwidth_bytes_per_s(max_mem_clock_mhz: int | None, bus_width_bits: int | None) -> float | None:
    """Peak DRAM bandwidth from NVML: 2 transfers per reported clock x bus width in bytes."""
    if not max_mem_clock_mhz or not bus_width_bits:
        return None
    return 2.0 * max_mem_clock_mhz * 1e6 * bus_width_bits / 8.0


def nvml_flops_per_s(entry: SpecEntry, sm_count: int | None, max_sm_clock_mhz: int | None) -> dict[str, float | None]:
    """Datasheet FLOP/s rescaled to this board's SM count and maximum SM clock."""
    if not (entry.sms and entry.boost_clock_mhz and sm_count and max_sm_clock_mhz):
        return {}
    scale = (sm_count / entry.sms) * (max_sm_clock_mhz / entry.boost_clock_mhz)
    return {k: (v * scale if v is not None else None) for k, v in entry.flops_per_s.items()}
