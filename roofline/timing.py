"""One timer for every roofline measurement: warm up, time N repetitions, keep every sample.

Two clocks behind one interface:

* ``"device"`` — on CUDA, events recorded on the current stream around the call: they time
  what the GPU did, not how long Python took to enqueue it (the nvbandwidth/triton.testing
  method). On CPU the same mode is `time.perf_counter`.
* ``"wall"`` — `perf_counter` around the call with a device synchronise on both sides: the
  latency a caller sees, host overhead included. The verify knee uses it because a verify
  step's Python and launch overhead is part of its cost.

Every sample is kept (the Parquet tables store them all); summaries use the median, which
a stray slow repetition on a shared machine does not move. `before` runs ahead of every
call, warm-up included, outside the timed region: cache flushes, KV-cache rollbacks.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

CLOCKS = ("device", "wall")


@dataclass(frozen=True)
class Timing:
    """Seconds per repetition after `warmup` untimed calls, measured with `clock`."""

    samples_s: tuple[float, ...]
    warmup: int
    clock: str  # "cuda_event" or "perf_counter"

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples_s)

    @property
    def min_s(self) -> float:
        return min(self.samples_s)

    @property
    def max_s(self) -> float:
        return max(self.samples_s)

    @property
    def spread(self) -> float:
        """(max - min) / median: how much the repetitions disagreed."""
        return (self.max_s - self.min_s) / self.median_s if self.median_s > 0 else float("inf")


class Timer:
    """Times callables on one device. `Timer("cuda:0")` uses CUDA events; `Timer("cpu")` perf_counter."""

    def __init__(self, device: torch.device | str, clock: str = "device"):
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, not {clock!r}")
        self.device = torch.device(device)
        self.clock = clock
        self._cuda = self.device.type == "cuda"

    @property
    def clock_name(self) -> str:
        return "cuda_event" if self._cuda and self.clock == "device" else "perf_counter"

    def sync(self) -> None:
        if self._cuda:
            torch.cuda.synchronize(self.device)

    def once(self, fn: Callable[[], object]) -> float:
        """Wall seconds of one synchronised call (used to size a measurement before making it)."""
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start

    def measure(
        self,
        fn: Callable[[], object],
        *,
        warmup: int = 2,
        reps: int = 5,
        before: Callable[[], object] | None = None,
    ) -> Timing:
        if reps < 1:
            raise ValueError("reps must be at least 1")
        for _ in range(warmup):
            if before is not None:
                before()
            fn()
        self.sync()
        if self.clock_name == "cuda_event":
            samples = self._measure_events(fn, reps, before)
        else:
            samples = self._measure_wall(fn, reps, before)
        return Timing(tuple(samples), warmup, self.clock_name)

    def _measure_wall(self, fn, reps, before) -> list[float]:
        samples = []
        for _ in range(reps):
            if before is not None:
                before()
            self.sync()
            start = time.perf_counter()
            fn()
            self.sync()
            samples.append(time.perf_counter() - start)
        return samples

    def _measure_events(self, fn, reps, before) -> list[float]:
        # All events are recorded first and read after one synchronise, so reading a
        # result never stalls the stream between repetitions. `before` (a cache flush)
        # is enqueued ahead of the start event and so is not inside the timed span.
        # Recorded on this device's stream: on cuda:N, N's work, whatever the current device is.
        stream = torch.cuda.current_stream(self.device)
        pairs = []
        for _ in range(reps):
            if before is not None:
                before()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record(stream)
            fn()
            end.record(stream)
            pairs.append((start, end))
        torch.cuda.synchronize(self.device)
        return [s.elapsed_time(e) / 1e3 for s, e in pairs]


class CacheFlusher:
    """Evicts the last-level cache between repetitions by writing a buffer twice its size.

    Writing (not reading) the buffer also evicts dirty lines of the measured arrays, so the
    next repetition starts from memory, as nvbandwidth and triton.testing.do_bench do.
    """

    def __init__(self, device: torch.device | str, llc_bytes: int):
        n = max(1, 2 * llc_bytes // 4)
        self.buffer = torch.empty(n, dtype=torch.int32, device=device)
        self._value = 0

    @property
    def nbytes(self) -> int:
        return self.buffer.numel() * self.buffer.element_size()

    def __call__(self) -> None:
        self._value ^= 1  # a changing value, so no layer can skip a "redundant" fill
        self.buffer.fill_(self._value)
