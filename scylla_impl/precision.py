"""Which precision is fast on this device: measured, never assumed, for the shape of the work.

CPUs of one kind differ: with AVX-512 BF16 or AMX a bf16 matmul ran at 917 GFLOP/s against
192 in fp32 on one of these 2-core machines, while an AVX2-only one emulates bf16 at about a
tenth of its fp32 speed. A GPU with bf16 support is always faster in bf16.

And one device can favour different precisions for different work. Training and feature
extraction multiply hundreds of rows at a time, where bf16's compute rate wins: `fast_dtype`
times such a matmul. Decoding multiplies a handful of rows by every weight and runs the
norms, rotary embeddings and attention of one token at a time, where which precision wins
depends on the few-row kernels the CPU has: on an AVX-512 BF16 EPYC SmolLM2-135M decoded 1.8x
faster in fp32 (through scylla_impl/skinny_linear.py) than in bf16 through torch, while on a
Xeon with AMX the kernel's bf16 tiles take an AR step from 37 ms in fp32 to 26 ms. So
`--dtype auto` for decoding times the model itself, both ways (scylla_impl/target.py, `auto_dtype`).
"""

import functools
import time

import torch

# bf16 must beat fp32 by this factor to be chosen: below it the rounding is not worth it. It
# was 1.5 while bf16 decode steps on the CPU parted from AR at near-ties; with the few-row
# kernels they are exact (skinny_linear.py, row_attention.py), and on a 2-core AMX Xeon bf16
# decodes the embedded target 1.45x faster (an AR step and an 8-token verify: 63 ms against 91).
MIN_SPEEDUP = 1.2


@functools.lru_cache(maxsize=8)
def bf16_speedup(device: str = "cpu") -> float:
    """bf16 over fp32 matmul throughput on `device`, for a draft-sized matmul (a few ms)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return 4.0 if torch.cuda.is_bf16_supported() else 0.0
    seconds = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(512, 576, dtype=dtype, device=dev)
        w = torch.randn(1536, 576, dtype=dtype, device=dev)
        a @ w.T  # warm-up: kernel selection
        times = []
        for _ in range(5):
            start = time.perf_counter()
            a @ w.T
            times.append(time.perf_counter() - start)
        seconds[dtype] = sorted(times)[2]
    return seconds[torch.float32] / max(seconds[torch.bfloat16], 1e-9)


def choose(bf16_over_fp32: float) -> str:
    """The one rule for 'auto': bf16 where it beats fp32 by MIN_SPEEDUP, else fp32. A CPU
    without bf16 instructions emulates it (an AVX2 EPYC: 18 vs 161 GFLOP/s)."""
    return "bfloat16" if bf16_over_fp32 >= MIN_SPEEDUP else "float32"


def fast_dtype(device: str = "cpu") -> str:
    """For bulk work (hundreds of rows): 'bfloat16' where measurably faster than fp32, else
    'float32'. Also the first test of decoding's `auto`: where bulk bf16 is not faster, bf16 is
    emulated or slow, and a decode step is no exception."""
    return choose(bf16_speedup(str(device)))
