"""Measured peak compute: a matmul shape search per dtype, best sustained FLOP/s.

For each dtype mode (`MODES`: bf16, fp16, fp32, and fp32 with TF32 on GPU) we time
C = A @ B over square sizes and two operand layouts:

  * "nn": B stored [k, n] row-major;
  * "nt": B stored [n, k] and passed transposed — the layout of nn.Linear weights.

Layout matters more than one would think: on an AVX2 CPU without native bf16, torch
sends "nt" bf16 to oneDNN (~15 GFLOP/s here) but "nn" bf16 to a reference loop
(~1 GFLOP/s). Sizes grow until the next one is predicted (cubic scaling of the last
measured call) to exceed a per-call time budget, so slow paths cost little.

FLOPs per call = 2*m*n*k (one multiply and one add per inner-product term).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from roofline.timing import Timer, Timing
from roofline.unmeasured import Unmeasured

LAYOUTS = ("nt", "nn")


@dataclass(frozen=True)
class Mode:
    name: str  # key in profile.json's flops_per_s
    dtype: torch.dtype
    tf32: bool = False
    gpu_only: bool = False


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("bfloat16", torch.bfloat16),
        Mode("float16", torch.float16),
        Mode("float32", torch.float32),
        # TF32 is a tensor-core input format; CPUs have no such mode.
        Mode("float32_tf32", torch.float32, tf32=True, gpu_only=True),
    )
}


@dataclass(frozen=True)
class MatmulSample:
    mode: str
    m: int
    n: int
    k: int
    layout: str
    timing: Timing

    @property
    def flops(self) -> int:
        return 2 * self.m * self.n * self.k

    @property
    def flops_per_s(self) -> float:
        return self.flops / self.timing.median_s

    def rows(self) -> list[dict]:
        base = {"mode": self.mode, "m": self.m, "n": self.n, "k": self.k, "layout": self.layout,
                "flops": self.flops, "clock": self.timing.clock, "warmup": self.timing.warmup}
        return [{**base, "rep": i, "seconds": s, "flops_per_s": self.flops / s}
                for i, s in enumerate(self.timing.samples_s)]


@dataclass
class ComputeResult:
    mode: str
    samples: list[MatmulSample]
    skipped: list[str]  # shapes not run, and why (budget)

    @property
    def best(self) -> MatmulSample | None:
        return max(self.samples, key=lambda s: s.flops_per_s, default=None)


@contextmanager
def _matmul_precision(tf32: bool) -> Iterator[None]:
    # "high" lets fp32 matmuls use TF32 tensor cores; "highest" forbids it. Restored after.
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def mode_unavailable(mode: Mode, device: torch.device) -> str | None:
    if mode.gpu_only and device.type != "cuda":
        return "TF32 is a GPU tensor-core mode; CPUs have no TF32 matmul"
    return None


def _operands(size: int, layout: str, dtype: torch.dtype, device: torch.device):
    gen = torch.Generator(device="cpu").manual_seed(size)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    b_store = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    b = b_store.t() if layout == "nt" else b_store  # "nt": a [n, k] buffer viewed as [k, n]
    out = torch.empty(size, size, dtype=dtype, device=device)
    return a, b, out


def search_mode(
    mode: Mode,
    device: torch.device,
    timer: Timer,
    *,
    sizes: tuple[int, ...],
    budget_s: float,
    warmup: int = 1,
    reps: int = 3,
    layouts: tuple[str, ...] = LAYOUTS,
) -> ComputeResult:
    """Time every (size, layout) within the per-call budget; return all samples."""
    result = ComputeResult(mode.name, [], [])
    with _matmul_precision(mode.tf32):
        for layout in layouts:
            last: tuple[int, float] | None = None
            for size in sorted(sizes):
                if last is not None:
                    predicted = last[1] * (size / last[0]) ** 3
                    if predicted > budget_s:
                        result.skipped.append(
                            f"{layout} {size}^3: predicted {predicted:.2f}s per call > budget {budget_s:.2f}s")
                        continue
                a, b, out = _operands(size, layout, mode.dtype, device)
                # The first call of a shape pays for library setup (cuBLAS handles and
                # heuristics, oneDNN primitive creation); size the measurement on the second.
                timer.once(lambda a=a, b=b, out=out: torch.mm(a, b, out=out))
                single = timer.once(lambda a=a, b=b, out=out: torch.mm(a, b, out=out))
                if single > 2 * budget_s:
                    result.skipped.append(f"{layout} {size}^3: one call took {single:.2f}s > 2x budget")
                    last = (size, single)
                    continue
                timing = timer.measure(lambda a=a, b=b, out=out: torch.mm(a, b, out=out),
                                       warmup=warmup, reps=reps)
                result.samples.append(MatmulSample(mode.name, size, size, size, layout, timing))
                last = (size, timing.median_s)
    return result


def peak_flops(results: list[ComputeResult]) -> tuple[dict[str, float], list[Unmeasured]]:
    """Best FLOP/s per mode; a mode with no sample becomes an Unmeasured."""
    peaks, missing = {}, []
    for r in results:
        best = r.best
        if best is None:
            missing.append(Unmeasured(f"flops_per_s.{r.mode}", "; ".join(r.skipped) or "no shape measured"))
        else:
            peaks[r.mode] = best.flops_per_s
    return peaks, missing
