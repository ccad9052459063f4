"""Measured memory bandwidth: read, copy and triad streams, timed the nvbandwidth way.

Method, for every (kernel, backend, buffer size):
  * buffers filled with a known integer pattern, outputs poisoned (NaN / -1) beforehand,
    so a kernel that does not run, or runs on the wrong data, fails verification;
  * warm-up calls, then N timed repetitions with the last-level cache flushed before each
    (`timing.CacheFlusher`), median reported, every repetition kept;
  * bytes counted from the buffers the kernel actually reads and writes — the program's
    bytes, as STREAM counts them (write-allocate traffic the hardware adds is not counted);
  * the result verified exactly after timing (integer-valued fp32: no rounding anywhere).

Peaks come only from buffers at least `PAST_LLC_FACTOR` times the last-level cache.

Kernels and backends are registries (`KERNELS`, each kernel's `impls`): Triton on GPU,
torch everywhere. On CPU the torch numbers are cross-checked against numpy's own triad
timed in the same run (`numpy_triad_crosscheck`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from roofline import triton_kernels
from roofline.timing import CacheFlusher, Timer, Timing

DTYPE = torch.float32  # fp32: exact in the Triton interpreter and on every backend
VERIFY_SLICE = 1 << 24  # elements per slice when numpy's triad result is checked
PAST_LLC_FACTOR = 4  # a buffer counts towards the peak only at >= 4x the last-level cache
TRIAD_SCALAR = 3.0
PATTERN_PERIOD = 8  # every buffer length is a multiple of this and of the block size
DEFAULT_CONFIG = triton_kernels.LaunchConfig()

Buffers = dict[str, torch.Tensor]


def _pattern(n: int, period: int, device, offset: float = 0.0) -> torch.Tensor:
    """x[i] = i % period + offset as fp32; built by repeat so no n-sized index tensor is made."""
    return (torch.arange(period, dtype=DTYPE, device=device) + offset).repeat(n // period)


# -- the kernels ------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamKernel:
    name: str
    reads: tuple[str, ...]  # buffer names read once per element
    writes: tuple[str, ...]  # buffer names written once per element
    make: Callable[[int, torch.device, int], Buffers]  # (n, device, block) -> buffers
    check: Callable[[Buffers, int], bool]  # exact verification of the outputs
    impls: dict[str, Callable[[Buffers, triton_kernels.LaunchConfig], None]] = field(default_factory=dict)

    def bytes_moved(self, bufs: Buffers) -> int:
        """Every byte the kernel reads or writes, counted from the real buffers."""
        return sum(bufs[k].numel() * bufs[k].element_size() for k in self.reads + self.writes)


def _make_read(n, device, block):
    return {"x": _pattern(n, PATTERN_PERIOD, device),
            "partials": torch.full((n // block,), float("nan"), dtype=DTYPE, device=device)}


def _check_read(bufs, block):
    # Each block holds block/8 whole periods of 0..7, summing to 28 each: exact in fp32.
    return bool((bufs["partials"] == 28.0 * (block // PATTERN_PERIOD)).all())


def _make_copy(n, device, block):
    return {"src": _pattern(n, PATTERN_PERIOD, device), "dst": torch.full((n,), -1.0, dtype=DTYPE, device=device)}


def _check_copy(bufs, block):
    return bool(torch.equal(bufs["dst"], bufs["src"]))


def _make_triad(n, device, block):
    return {"a": torch.full((n,), float("nan"), dtype=DTYPE, device=device),
            "b": _pattern(n, PATTERN_PERIOD, device),
            "c": _pattern(n, PATTERN_PERIOD // 2, device, offset=1.0)}


def _check_triad(bufs, block):
    # b + 3c <= 7 + 12: small integers, exact with or without a fused multiply-add.
    return bool(torch.equal(bufs["a"], bufs["b"] + TRIAD_SCALAR * bufs["c"]))


KERNELS: dict[str, StreamKernel] = {
    k.name: k
    for k in (
        StreamKernel(
            "read", reads=("x",), writes=("partials",), make=_make_read, check=_check_read,
            impls={
                "torch": lambda b, cfg: torch.sum(b["x"].view(-1, cfg.block), dim=1, out=b["partials"]),
                "triton": lambda b, cfg: triton_kernels.read(b["x"], b["partials"], cfg),
            },
        ),
        StreamKernel(
            "copy", reads=("src",), writes=("dst",), make=_make_copy, check=_check_copy,
            impls={
                "torch": lambda b, cfg: b["dst"].copy_(b["src"]),
                "triton": lambda b, cfg: triton_kernels.copy(b["src"], b["dst"], cfg),
            },
        ),
        StreamKernel(
            "triad", reads=("b", "c"), writes=("a",), make=_make_triad, check=_check_triad,
            impls={
                # torch.add(b, c, alpha=s) is one fused pass: a = b + s*c.
                "torch": lambda b, cfg: torch.add(b["b"], b["c"], alpha=TRIAD_SCALAR, out=b["a"]),
                "triton": lambda b, cfg: triton_kernels.triad(b["a"], b["b"], b["c"], TRIAD_SCALAR, cfg),
            },
        ),
    )
}
BACKENDS = ("triton", "torch")


def backend_unavailable(backend: str, device: torch.device) -> str | None:
    """Why `backend` cannot measure on `device`, or None when it can."""
    if backend == "torch":
        return None
    if backend == "triton":
        if triton_kernels.TRITON_ERROR:
            return triton_kernels.TRITON_ERROR
        if device.type != "cuda" and not triton_kernels.interpreting():
            return ("Triton compiles for GPUs; on CPU it only runs under TRITON_INTERPRET=1, "
                    "which checks correctness (tests) but is far too slow to measure bandwidth")
        return None
    return f"unknown backend {backend!r}"


# -- one measurement ----------------------------------------------------------------------


@dataclass(frozen=True)
class BandwidthSample:
    kernel: str
    backend: str
    elements: int
    buffer_bytes: int  # bytes of one array
    bytes_moved: int  # per call, all arrays read and written
    past_llc: bool  # buffer_bytes >= PAST_LLC_FACTOR x last-level cache
    config: triton_kernels.LaunchConfig
    timing: Timing
    verified: bool

    @property
    def bytes_per_s(self) -> float:
        return self.bytes_moved / self.timing.median_s

    def rows(self) -> list[dict]:
        """One row per timed repetition: the raw Parquet table."""
        base = {
            "kernel": self.kernel, "backend": self.backend, "dtype": str(DTYPE).removeprefix("torch."),
            "elements": self.elements, "buffer_bytes": self.buffer_bytes, "bytes_moved": self.bytes_moved,
            "past_llc": self.past_llc, "block": self.config.block, "num_warps": self.config.num_warps,
            "verified": self.verified, "clock": self.timing.clock, "warmup": self.timing.warmup,
        }
        return [{**base, "rep": i, "seconds": s, "bytes_per_s": self.bytes_moved / s}
                for i, s in enumerate(self.timing.samples_s)]


def elements_for(buffer_bytes: int, block: int) -> int:
    """Elements of one fp32 array of about `buffer_bytes`, a whole number of blocks (and periods)."""
    unit = math.lcm(block, PATTERN_PERIOD)
    return max(unit, (buffer_bytes // 4) // unit * unit)


def measure_stream(
    kernel: StreamKernel,
    backend: str,
    n: int,
    device: torch.device,
    timer: Timer,
    *,
    flusher: CacheFlusher | None,
    llc_bytes: int | None,
    config: triton_kernels.LaunchConfig = DEFAULT_CONFIG,
    warmup: int = 2,
    reps: int = 5,
) -> BandwidthSample:
    if n % config.block:
        raise ValueError(f"{n} elements is not a whole number of {config.block}-element blocks")
    run = kernel.impls[backend]
    bufs = kernel.make(n, device, config.block)  # freed on return: one size in memory at a time
    timing = timer.measure(lambda: run(bufs, config), warmup=warmup, reps=reps, before=flusher)
    verified = kernel.check(bufs, config.block)
    buffer_bytes = n * DTYPE.itemsize
    return BandwidthSample(
        kernel=kernel.name, backend=backend, elements=n, buffer_bytes=buffer_bytes,
        bytes_moved=kernel.bytes_moved(bufs),
        past_llc=llc_bytes is not None and buffer_bytes >= PAST_LLC_FACTOR * llc_bytes,
        config=config, timing=timing, verified=verified,
    )


def peak_by_kernel(samples: list[BandwidthSample], backend: str) -> dict[str, float]:
    """Best median bandwidth per kernel over verified, past-LLC measurements of one backend."""
    best: dict[str, float] = {}
    for s in samples:
        if s.backend == backend and s.verified and s.past_llc:
            best[s.kernel] = max(best.get(s.kernel, 0.0), s.bytes_per_s)
    return best


# -- numpy's own triad, the cross-check on CPU -----------------------------------------------

# numpy has no fused triad: a = b + s*c is two passes, multiply (read c, write a) then
# add (read a, read b, write a) — five arrays' worth of bytes per element, all counted.
NUMPY_TRIAD_ARRAYS = 5


@dataclass(frozen=True)
class TriadCrossCheck:
    elements: int
    threads: int
    torch_timing: Timing
    numpy_timing: Timing
    torch_bytes_per_call: int
    numpy_bytes_per_call: int
    numpy_verified: bool
    tolerance: float = 0.20

    @property
    def torch_bytes_per_s(self) -> float:
        return self.torch_bytes_per_call / self.torch_timing.median_s

    @property
    def numpy_bytes_per_s(self) -> float:
        return self.numpy_bytes_per_call / self.numpy_timing.median_s

    @property
    def ratio(self) -> float:
        return self.torch_bytes_per_s / self.numpy_bytes_per_s

    @property
    def agrees(self) -> bool:
        return abs(self.ratio - 1.0) <= self.tolerance

    def to_json(self) -> dict:
        return {
            "numpy_bytes_per_s": self.numpy_bytes_per_s,
            "torch_bytes_per_s": self.torch_bytes_per_s,
            "ratio_torch_over_numpy": self.ratio,
            "agrees_within": self.tolerance,
            "agrees": self.agrees,
            "elements": self.elements,
            "buffer_bytes": self.elements * 4,
            "threads": self.threads,
            "numpy_arrays_counted": NUMPY_TRIAD_ARRAYS,
            "numpy_verified": self.numpy_verified,
            "method": "interleaved repetitions: torch.add(b, c, alpha=s) (3 arrays) vs numpy "
                      "multiply+add (5 arrays), same buffers' size, same thread count, cache flushed",
        }

    def rows(self) -> list[dict]:
        out = []
        for impl, timing, nbytes in (("torch", self.torch_timing, self.torch_bytes_per_call),
                                     ("numpy", self.numpy_timing, self.numpy_bytes_per_call)):
            out += [{"impl": impl, "rep": i, "seconds": s, "bytes_moved": nbytes, "bytes_per_s": nbytes / s,
                     "elements": self.elements, "threads": self.threads} for i, s in enumerate(timing.samples_s)]
        return out


def numpy_triad_crosscheck(
    n: int, *, threads: int, flusher: CacheFlusher | None, warmup: int = 1, reps: int = 5,
) -> TriadCrossCheck:
    """Time torch's triad and numpy's triad on CPU, alternating repetitions.

    Alternating makes both see the same machine load (the hosts are shared); numpy's
    ufuncs are single-threaded, so the arrays are split over `threads` Python threads
    (ufuncs release the GIL) to match torch's thread count.
    """
    timer = Timer("cpu")
    bufs = _make_triad(n, torch.device("cpu"), PATTERN_PERIOD)
    a, b, c = (bufs[k].numpy() for k in ("a", "b", "c"))
    bounds = np.linspace(0, n, threads + 1, dtype=np.int64)
    chunks = list(zip(bounds[:-1], bounds[1:]))

    def np_part(lo_hi):
        lo, hi = lo_hi
        np.multiply(c[lo:hi], TRIAD_SCALAR, out=a[lo:hi])
        np.add(a[lo:hi], b[lo:hi], out=a[lo:hi])

    with ThreadPoolExecutor(max_workers=threads) as pool:
        def np_triad():
            list(pool.map(np_part, chunks))

        def torch_triad():
            torch.add(bufs["b"], bufs["c"], alpha=TRIAD_SCALAR, out=bufs["a"])

        for _ in range(warmup):
            torch_triad()
            np_triad()
        t_torch, t_numpy = [], []
        for _ in range(reps):
            t_torch += timer.measure(torch_triad, warmup=0, reps=1, before=flusher).samples_s
            bufs["a"].fill_(float("nan"))
            t_numpy += timer.measure(np_triad, warmup=0, reps=1, before=flusher).samples_s
        # Checked a slice at a time: `b + s * c` over the whole buffers would allocate two more of them.
        step = VERIFY_SLICE
        verified = all(np.array_equal(a[i:i + step], b[i:i + step] + TRIAD_SCALAR * c[i:i + step])
                       for i in range(0, n, step))
    nbytes = 4 * n
    return TriadCrossCheck(
        elements=n, threads=threads,
        torch_timing=Timing(tuple(t_torch), warmup, timer.clock_name),
        numpy_timing=Timing(tuple(t_numpy), warmup, timer.clock_name),
        torch_bytes_per_call=3 * nbytes, numpy_bytes_per_call=NUMPY_TRIAD_ARRAYS * nbytes,
        numpy_verified=verified,
    )
