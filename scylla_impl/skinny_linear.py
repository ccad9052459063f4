"""fp32 matmuls with few rows on the CPU, at the speed of reading the weights once.

A decode step multiplies a handful of rows (1 for AR, b x tree tokens for a verify or a
draft level) by every weight matrix of the model. BLAS libraries are built for big
matrices: for a few rows they pack the weights first, so every weight byte is read,
written and read again. Measured on a 2-core AMD EPYC (AVX-512) over the embedded target's
211 weight matrices (538 MB, fp32, 2 threads; `python -m reports.speed` shows the effect on
whole steps):

    rows              1      2      4      8     16     32     60
    torch (MKL)     47.7   80.1   81.7   67.4   86.0  125.0  211.4 ms
    this kernel     19.1   20.1   31.1   34.8   59.2  106.1  220.5 ms

The kernel streams the weights once and multiplies them into the input rows held in vector
registers: one weight row at a time against up to 4 input rows, two weight rows sharing each
input load beyond that (a register block of 2 x 8 rows with AVX-512, 2 x 4 with AVX2; larger
inputs walk the same weights again from L1), with the next weight rows prefetched so the
multiplies do not wait on memory (without the prefetch, and with one weight row per block,
8 rows took 54.8 ms and 16 took 90.5). Every output is summed in the same order whatever the
number of rows, the blocking or the threads, so a token scored alone (AR) and the same token
scored inside a tree (verify) get bit-identical logits, which BLAS does not promise.

It is compiled for this CPU on first use (about a minute, once per machine, kept in the
user's cache folder, ~/.cache/scylla-bench/kernels on Linux) with the C++ compiler and ninja. Where either is missing, or the build fails,
`kernel()` says why once and returns None, and callers use torch's own matmul.
"""

import contextlib
import contextvars
import hashlib
import os
import platform
import sys
from functools import cache
from pathlib import Path

import platformdirs
import torch
import torch.nn.functional as F
from torch import nn

# Beyond 32 rows BLAS's blocking catches up (60 rows: 0.8-1.0x the kernel's time over repeated
# runs of the table), and a verify that wide is no longer a few-row step.
MAX_ROWS = 32

# -ffp-contract=off: otherwise GCC fuses `acc += w * x` into an FMA in some template instances
# and not in others (seen on Zen 4 with AVX-512), and a row alone rounds differently from the
# same row in a batch of 8.
CFLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp"]

SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cstring>

typedef float v8 __attribute__((vector_size(32)));
static inline v8 load8(const float* p) { v8 v; std::memcpy(&v, p, sizeof(v)); return v; }
static inline float hsum(v8 v) { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }

// Input rows per register block: NB x MB accumulators, MB inputs and NB weights must fit the
// vector registers (32 with AVX-512, 16 with AVX2).
#ifdef __AVX512VL__
constexpr int MB_MAX = 8;
#else
constexpr int MB_MAX = 4;
#endif

// y[i, n + j] for MB input rows against NB weight rows n..n+NB-1. Lane l of an accumulator sums
// k = l mod 8 in order, then the lanes in a fixed tree, then the tail: no step depends on NB, MB,
// M or the thread split, so every output gets the same bits however it was blocked. Weight rows
// 8 blocks ahead are prefetched into L2 while these are multiplied: with several input rows the
// hardware prefetcher alone leaves the multiplies waiting on memory, and one block ahead (into
// L1) is too late to hide it (the whole model at 4 rows: 24 ms against 30 and 35 without).
template <int NB, int MB>
static inline void block(const float* x, const float* w, float* y, int64_t K, int64_t N, int64_t n) {
  v8 acc[NB][MB];
  for (int j = 0; j < NB; ++j)
    for (int i = 0; i < MB; ++i) acc[j][i] = v8{0, 0, 0, 0, 0, 0, 0, 0};
  const int64_t K8 = K - K % 8;
  for (int64_t k = 0; k < K8; k += 8) {
    for (int j = 0; j < NB; ++j) __builtin_prefetch(w + (8 * NB + j) * K + k, 0, 1);
    v8 xv[MB];
    for (int i = 0; i < MB; ++i) xv[i] = load8(x + i * K + k);
    for (int j = 0; j < NB; ++j) {
      const v8 wv = load8(w + j * K + k);
      for (int i = 0; i < MB; ++i) acc[j][i] += wv * xv[i];
    }
  }
  for (int j = 0; j < NB; ++j)
    for (int i = 0; i < MB; ++i) {
      float s = hsum(acc[j][i]);
      for (int64_t k = K8; k < K; ++k) s += w[j * K + k] * x[i * K + k];
      y[i * N + n + j] = s;
    }
}

// Every input row against weight rows n..n+NB-1, MB_MAX input rows at a time.
template <int NB>
static void weight_rows(const float* x, const float* w, float* y, int64_t M, int64_t K, int64_t N, int64_t n) {
  for (int64_t m = 0; m < M; m += MB_MAX) {
    const float* xb = x + m * K;
    float* yb = y + m * N;
    switch (std::min<int64_t>(MB_MAX, M - m)) {
      case 1: block<NB, 1>(xb, w, yb, K, N, n); break;
      case 2: block<NB, 2>(xb, w, yb, K, N, n); break;
      case 3: block<NB, 3>(xb, w, yb, K, N, n); break;
      case 4: block<NB, 4>(xb, w, yb, K, N, n); break;
#ifdef __AVX512VL__
      case 5: block<NB, 5>(xb, w, yb, K, N, n); break;
      case 6: block<NB, 6>(xb, w, yb, K, N, n); break;
      case 7: block<NB, 7>(xb, w, yb, K, N, n); break;
      case 8: block<NB, 8>(xb, w, yb, K, N, n); break;
#endif
    }
  }
}

// x [M, K] and w [N, K], contiguous fp32 -> x @ w.T [M, N].
torch::Tensor skinny_linear(torch::Tensor x, torch::Tensor w) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "skinny_linear: shapes");
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous(), "skinny_linear: contiguous inputs");
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat, "skinny_linear: fp32");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  auto y = torch::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  // Up to 4 input rows the weight stream is the limit and one weight row at a time reads it
  // best; beyond, two weight rows share each input load, which halves the loads per multiply.
  const int64_t NB = M <= 4 ? 1 : 2;
  at::parallel_for(0, (N + NB - 1) / NB, 16 / NB, [&](int64_t b0, int64_t b1) {
    for (int64_t n = b0 * NB; n < std::min(b1 * NB, N); n += NB) {
      if (NB == 2 && n + 2 <= N) weight_rows<2>(xp, wp + n * K, yp, M, K, N, n);
      else for (int64_t r = n; r < std::min(n + NB, N); ++r) weight_rows<1>(xp, wp + r * K, yp, M, K, N, r);
    }
  });
  return y;
}

// The operator a compiled graph calls (scylla_impl/compiled.py), registered from C++: defined
// in Python (torch.library.custom_op) each of a step's 211 calls went through Python, and the
// compiled AR step of the embedded target took 35.9 ms instead of 31.4 (fp32, 2 threads).
TORCH_LIBRARY(scylla, m) { m.def("skinny_linear(Tensor x, Tensor weight) -> Tensor"); }
TORCH_LIBRARY_IMPL(scylla, CPU, m) { m.impl("skinny_linear", &skinny_linear); }
"""


def cpu_signature() -> str:
    """What the binary depends on: the source and flags, this CPU's instruction set (-march=native),
    torch and Python. A machine that differs in any of them builds its own."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        flags = platform.processor()
    text = "\n".join([SOURCE, *CFLAGS, flags, platform.machine(), torch.__version__, sys.version])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _ninja_on_path() -> None:
    """torch runs `ninja` from PATH; the ninja package's binary is not there when the venv is
    used without being activated (`.venv/bin/python ...`)."""
    try:
        import ninja
    except ImportError:  # the user's own ninja, if any, is on PATH already
        return
    if ninja.BIN_DIR not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


@cache
def kernel():
    """The compiled `skinny_linear(x, w)`, or None (said once on stderr) where it cannot be built."""
    from torch.utils import cpp_extension

    _ninja_on_path()
    name = f"skinny_linear_{cpu_signature()}"
    # The machine's cache, not SCYLLA_HOME: the binary belongs to the CPU, not to a data folder.
    folder = Path(platformdirs.user_cache_dir("scylla-bench")) / "kernels" / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not any(folder.glob("*.so")):
            print("compiling the CPU matmul kernel for few-row fp32 steps (once per machine, about a minute)",
                  file=sys.stderr, flush=True)
        module = cpp_extension.load_inline(name, cpp_sources=SOURCE, functions=["skinny_linear"],
                                           extra_cflags=CFLAGS,
                                           build_directory=str(folder), verbose=False)
    except (OSError, RuntimeError, ImportError) as err:  # no compiler or ninja here, or the build failed
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"note: CPU matmul kernel unavailable ({first}); fp32 decode steps use torch's matmul",
              file=sys.stderr, flush=True)
        return None
    torch.library.register_fake("scylla::skinny_linear")(_fake)
    global _BUILT
    _BUILT = True
    return module.skinny_linear


_BUILT = False  # kernel() has returned the kernel: compiled graphs read this, not the cached call


def _fake(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The operator's output shape, for tracing (the binary defines the operator itself)."""
    return x.new_empty(x.shape[0], weight.shape[0])


_ENABLED = contextvars.ContextVar("skinny_linear_enabled", default=True)


@contextlib.contextmanager
def off():
    """torch's matmul for every row count inside: training's target features and labels, so a
    position's feature does not depend on how many rows were batched with it (the kernel and
    BLAS round differently, and the row count picks between them)."""
    token = _ENABLED.set(False)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, through the kernel where it applies: fp32 on the CPU, at most MAX_ROWS rows,
    no autograd, not inside `off()`, and the kernel built here."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    # A compiled graph is always a decode step (training never compiles), and tracing cannot
    # read the context variable.
    compiling = torch.compiler.is_compiling()
    applies = ((compiling or _ENABLED.get()) and 0 < rows <= MAX_ROWS
               and x.dtype == weight.dtype == torch.float32
               and x.device.type == weight.device.type == "cpu" and weight.is_contiguous()
               and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)))
    if compiling:
        run = torch.ops.scylla.skinny_linear if applies and _BUILT else None
    else:
        run = kernel() if applies else None
    if run is None:
        return F.linear(x, weight, bias)
    y = run(x.reshape(rows, x.shape[-1]).contiguous(), weight)  # [rows, out]
    if bias is not None:
        y += bias
    return y.view(*x.shape[:-1], y.shape[-1])


class SkinnyLinear(nn.Linear):
    """nn.Linear through `linear`. Installed by changing the class of a model's existing Linear
    modules (`install`): parameters, tying and state-dict keys stay exactly as they were."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def install(model: nn.Module) -> int:
    """Route `model`'s fp32 CPU Linear layers through the kernel where it builds; returns how
    many layers now use it (0 where it is unavailable or nothing qualifies)."""
    linears = [m for m in model.modules() if type(m) is nn.Linear and m.weight.device.type == "cpu"
               and m.weight.dtype == torch.float32 and m.weight.is_contiguous()]
    if not linears or kernel() is None:
        return 0
    for module in linears:
        module.__class__ = SkinnyLinear
    return len(linears)


__all__ = ["MAX_ROWS", "SkinnyLinear", "install", "kernel", "linear", "off"]
