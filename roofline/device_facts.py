"""Facts about the machine a measurement ran on: CPU always, NVIDIA GPU through NVML and torch.

Everything here is read, never measured. A fact that cannot be read (no driver, no
permission, an API this driver lacks) is left as None and its reason recorded in
`DeviceFacts.unmeasured`, so a report can show exactly what is unknown.

    facts = collect_device_facts("cuda:0")   # or "cpu"
    facts.name, facts.llc_bytes, facts.to_json()
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from roofline.nvml import (
    decode_clock_event_reasons,
    first_available,
    handle_for_torch_device,
    open_nvml,
    query,
)
from roofline.unmeasured import Unmeasured

# ISA extensions that decide which matmul/streaming code paths a CPU can take.
INTERESTING_ISA = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16", "amx_int8", "avx_vnni",
    "asimd", "sve", "sve2", "bf16", "i8mm",
)
SYSFS_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")


@dataclass(frozen=True)
class CacheLevel:
    level: int
    type: str  # Data / Instruction / Unified
    size_bytes: int
    shared_cpus: str  # cpulist sharing one instance, e.g. "0-1"


@dataclass
class CpuFacts:
    model: str
    architecture: str
    logical_cpus: int
    physical_cores: int | None
    cpus_available: int  # this process's affinity mask
    threads_used: int  # torch intra-op threads during the profile
    mhz: float | None
    memory_bytes: int | None
    caches: list[CacheLevel]
    llc_bytes: int | None
    isa: list[str]


@dataclass
class GpuFacts:
    index: int
    name: str
    compute_capability: str | None = None
    sm_count: int | None = None
    l2_cache_bytes: int | None = None
    memory_bytes: int | None = None
    max_sm_clock_mhz: int | None = None
    max_mem_clock_mhz: int | None = None
    sm_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None
    memory_bus_width_bits: int | None = None
    power_limit_w: float | None = None
    clock_event_reasons: list[str] | None = None  # a.k.a. throttle reasons, at collection time
    driver_version: str | None = None
    cuda_driver_version: int | None = None
    uuid: str | None = None


@dataclass
class DeviceFacts:
    kind: str  # "cpu" | "cuda"
    name: str  # what reports print: the GPU name, else the CPU model
    device: str  # torch device string measured on
    cpu: CpuFacts
    gpu: GpuFacts | None
    software: dict[str, str | None]
    nvml_available: bool
    nvml_reason: str | None
    unmeasured: list[Unmeasured] = field(default_factory=list)

    @property
    def llc_bytes(self) -> int | None:
        """Last-level cache of the measured device: GPU L2, else the CPU's largest cache."""
        if self.gpu is not None:
            return self.gpu.l2_cache_bytes
        return self.cpu.llc_bytes

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["unmeasured"] = [u.to_json() for u in self.unmeasured]
        doc["llc_bytes"] = self.llc_bytes
        return doc


# -- CPU ------------------------------------------------------------------------------


def _parse_size(text: str) -> int:
    """'32768K' / '1M' / '512 KiB' -> bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"unrecognised cache size {text!r}")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2).upper()]
    return int(m.group(1)) * scale


def read_cpu_caches(root: Path = SYSFS_CACHE) -> list[CacheLevel]:
    caches = []
    for index in sorted(root.glob("index*")):
        try:
            caches.append(CacheLevel(
                level=int((index / "level").read_text()),
                type=(index / "type").read_text().strip(),
                size_bytes=_parse_size((index / "size").read_text()),
                shared_cpus=(index / "shared_cpu_list").read_text().strip(),
            ))
        except (OSError, ValueError):
            continue
    return caches


def _cpuinfo() -> list[dict[str, str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    blocks = []
    for block in text.strip().split("\n\n"):
        entry = {}
        for line in block.splitlines():
            key, _, value = line.partition(":")
            entry[key.strip()] = value.strip()
        blocks.append(entry)
    return blocks


def _meminfo(field: str) -> int | None:
    """Bytes of a /proc/meminfo field (Linux), or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def host_available_bytes() -> int | None:
    """Host memory a new allocation can take now (Linux's MemAvailable, else free pages), or None."""
    available = _meminfo("MemAvailable")
    if available is not None:
        return available
    try:  # not Linux: free pages, which leaves out reclaimable caches (an underestimate)
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def collect_cpu_facts(unmeasured: list[Unmeasured]) -> CpuFacts:
    info = _cpuinfo()
    first = info[0] if info else {}
    model = first.get("model name") or first.get("Model") or platform.processor() or platform.machine()
    flags = set((first.get("flags") or first.get("Features") or "").split())
    cores = {(b.get("physical id"), b.get("core id")) for b in info if "core id" in b}
    mhz = None
    try:
        mhz = float(first["cpu MHz"])
    except (KeyError, ValueError):
        unmeasured.append(Unmeasured("cpu.mhz", "/proc/cpuinfo has no 'cpu MHz'"))
    caches = read_cpu_caches()
    if not caches:
        unmeasured.append(Unmeasured("cpu.caches", f"no readable cache description under {SYSFS_CACHE}"))
    llc = max(caches, key=lambda c: (c.level, c.size_bytes)).size_bytes if caches else None
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        available = os.cpu_count() or 1
    return CpuFacts(
        model=model,
        architecture=platform.machine(),
        logical_cpus=os.cpu_count() or 1,
        physical_cores=len(cores) or None,
        cpus_available=available,
        threads_used=torch.get_num_threads(),
        mhz=mhz,
        memory_bytes=_meminfo("MemTotal"),
        caches=caches,
        llc_bytes=llc,
        isa=sorted(f for f in INTERESTING_ISA if f in flags),
    )


# -- GPU ------------------------------------------------------------------------------


def _torch_gpu_facts(index: int) -> GpuFacts:
    props = torch.cuda.get_device_properties(index)
    major, minor = getattr(props, "major", None), getattr(props, "minor", None)
    return GpuFacts(
        index=index,
        name=props.name,
        compute_capability=f"{major}.{minor}" if major is not None else None,
        sm_count=getattr(props, "multi_processor_count", None),
        l2_cache_bytes=getattr(props, "L2_cache_size", None),
        memory_bytes=getattr(props, "total_memory", None),
        uuid=str(props.uuid) if getattr(props, "uuid", None) is not None else None,
    )


def _nvml_gpu_facts(gpu: GpuFacts, nvml: Any, unmeasured: list[Unmeasured]) -> None:
    handle = handle_for_torch_device(nvml, gpu.index)
    if not handle.ok:
        unmeasured.append(Unmeasured("gpu.nvml", f"no NVML handle for cuda:{gpu.index}: {handle.reason}"))
        return
    h = handle.value
    sm, mem = nvml.NVML_CLOCK_SM, nvml.NVML_CLOCK_MEM
    # field -> (reading, converter): one table instead of a ladder of try/excepts.
    readings = {
        "max_sm_clock_mhz": (query(nvml.nvmlDeviceGetMaxClockInfo, h, sm), int),
        "max_mem_clock_mhz": (query(nvml.nvmlDeviceGetMaxClockInfo, h, mem), int),
        "sm_clock_mhz": (query(nvml.nvmlDeviceGetClockInfo, h, sm), int),
        "mem_clock_mhz": (query(nvml.nvmlDeviceGetClockInfo, h, mem), int),
        "memory_bus_width_bits": (query(nvml.nvmlDeviceGetMemoryBusWidth, h), int),
        "power_limit_w": (query(nvml.nvmlDeviceGetEnforcedPowerLimit, h), lambda mw: mw / 1000.0),
        "memory_bytes": (query(nvml.nvmlDeviceGetMemoryInfo, h), lambda m: int(m.total)),
        "driver_version": (query(nvml.nvmlSystemGetDriverVersion), str),
        "cuda_driver_version": (query(nvml.nvmlSystemGetCudaDriverVersion), int),
        "clock_event_reasons": (
            first_available(nvml, ("nvmlDeviceGetCurrentClocksEventReasons",
                                   "nvmlDeviceGetCurrentClocksThrottleReasons"), h),
            lambda mask: decode_clock_event_reasons(nvml, int(mask)),
        ),
    }
    for name, (reading, convert) in readings.items():
        if reading.ok:
            setattr(gpu, name, convert(reading.value))
        else:
            unmeasured.append(Unmeasured(f"gpu.{name}", reading.reason or "unknown"))


def _software() -> dict[str, str | None]:
    import numpy

    versions: dict[str, str | None] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "numpy": numpy.__version__,
    }
    try:
        import triton

        versions["triton"] = triton.__version__
    except ImportError:
        versions["triton"] = None
    return versions


def collect_device_facts(device: torch.device | str) -> DeviceFacts:
    device = torch.device(device)
    unmeasured: list[Unmeasured] = []
    cpu = collect_cpu_facts(unmeasured)
    gpu = None
    nvml, nvml_reason = open_nvml()
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        gpu = _torch_gpu_facts(index)
        if nvml is not None:
            _nvml_gpu_facts(gpu, nvml, unmeasured)
        else:
            unmeasured.append(Unmeasured("gpu.nvml", nvml_reason or "NVML unavailable"))
        if gpu.l2_cache_bytes is None:
            unmeasured.append(Unmeasured("gpu.l2_cache_bytes", "torch device properties lack L2_cache_size"))
    return DeviceFacts(
        kind=device.type,
        name=gpu.name if gpu is not None else cpu.model,
        device=str(device),
        cpu=cpu,
        gpu=gpu,
        software=_software(),
        nvml_available=nvml is not None,
        nvml_reason=nvml_reason,
        unmeasured=unmeasured,
    )
