"""Background NVML sampler: clocks, power, utilisation, memory and temperature during a run.

    with NvmlSampler(interval_s=0.1) as sampler:
        run_the_benchmark()
    sampler.samples          # list[NvmlSample]
    sampler.summary()        # per-field mean / max, for one results row
    sampler.available, sampler.reason

Without a GPU, a driver or pynvml it is a silent no-op: `available` is False, `reason`
says why, `samples` stays empty, and nothing is ever raised. Fields a GPU refuses (no
permission, not supported) are None in each sample and listed in `missing`.

Each sample costs a handful of NVML calls (~100 us); the thread sleeps between them,
so at the default 10 Hz it takes no measurable time from the run it watches.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

from roofline.nvml import decode_clock_event_reasons, first_available, open_nvml, query


@dataclass(frozen=True)
class NvmlSample:
    t_s: float  # seconds since the sampler started
    gpu: int  # NVML device index
    sm_clock_mhz: int | None
    mem_clock_mhz: int | None
    power_w: float | None
    gpu_util_pct: int | None
    mem_util_pct: int | None
    memory_used_bytes: int | None
    temperature_c: int | None
    clock_event_reasons: str | None  # comma-separated names (throttle reasons)


NUMERIC_FIELDS = tuple(f.name for f in fields(NvmlSample)
                       if f.name not in ("t_s", "gpu", "clock_event_reasons"))


class NvmlSampler:
    def __init__(self, interval_s: float = 0.1, devices: list[int] | None = None):
        """Sample NVML devices `devices` (NVML indices; default: all) every `interval_s` seconds."""
        self.interval_s = interval_s
        self.samples: list[NvmlSample] = []
        self.missing: dict[str, str] = {}  # field -> first reason it could not be read
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml, self.reason = open_nvml()
        self._handles: list[tuple[int, Any]] = []
        if self._nvml is not None:
            count = query(self._nvml.nvmlDeviceGetCount)
            indices = devices if devices is not None else list(range(count.value or 0))
            for i in indices:
                h = query(self._nvml.nvmlDeviceGetHandleByIndex, i)
                if h.ok:
                    self._handles.append((i, h.value))
            if not self._handles:
                self.reason = "NVML found no GPU" + (f" ({count.reason})" if count.reason else "")

    @property
    def available(self) -> bool:
        return bool(self._handles)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> NvmlSampler:
        if self.available and self._thread is None:
            self._t0 = time.perf_counter()
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5 * self.interval_s + 1)
            self._thread = None

    def __enter__(self) -> NvmlSampler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for index, handle in self._handles:
                self.samples.append(self._read(index, handle))
            self._stop.wait(self.interval_s)

    def _read(self, index: int, h: Any) -> NvmlSample:
        nvml = self._nvml
        util = query(nvml.nvmlDeviceGetUtilizationRates, h)
        mem = query(nvml.nvmlDeviceGetMemoryInfo, h)
        reasons = first_available(nvml, ("nvmlDeviceGetCurrentClocksEventReasons",
                                         "nvmlDeviceGetCurrentClocksThrottleReasons"), h)
        readings = {
            "sm_clock_mhz": query(nvml.nvmlDeviceGetClockInfo, h, nvml.NVML_CLOCK_SM),
            "mem_clock_mhz": query(nvml.nvmlDeviceGetClockInfo, h, nvml.NVML_CLOCK_MEM),
            "power_w": query(nvml.nvmlDeviceGetPowerUsage, h),
            "gpu_util_pct": util,
            "mem_util_pct": util,
            "memory_used_bytes": mem,
            "temperature_c": query(nvml.nvmlDeviceGetTemperature, h, nvml.NVML_TEMPERATURE_GPU),
            "clock_event_reasons": reasons,
        }
        convert = {
            "power_w": lambda mw: mw / 1000.0,
            "gpu_util_pct": lambda u: int(u.gpu),
            "mem_util_pct": lambda u: int(u.memory),
            "memory_used_bytes": lambda m: int(m.used),
            "clock_event_reasons": lambda mask: ",".join(decode_clock_event_reasons(nvml, int(mask))),
        }
        values = {}
        for name, reading in readings.items():
            if reading.ok:
                values[name] = convert.get(name, int)(reading.value)
            else:
                values[name] = None
                self.missing.setdefault(name, reading.reason or "unknown")
        return NvmlSample(t_s=time.perf_counter() - self._t0, gpu=index, **values)

    # -- results ----------------------------------------------------------------------------

    def records(self) -> list[dict]:
        return [asdict(s) for s in self.samples]

    def summary(self) -> dict[str, Any]:
        """{field_mean, field_max} over all samples, plus availability; JSON-ready."""
        out: dict[str, Any] = {"available": self.available, "reason": self.reason,
                               "samples": len(self.samples), "interval_s": self.interval_s}
        for name in NUMERIC_FIELDS:
            values = [getattr(s, name) for s in self.samples if getattr(s, name) is not None]
            out[f"{name}_mean"] = statistics.fmean(values) if values else None
            out[f"{name}_max"] = max(values) if values else None
        if self.missing:
            out["missing"] = dict(self.missing)
        return out
