"""A draft's RMSNorm on the CPU: one operator instead of eight, with eager's bits.

Eager RMSNorm (drafts/layers.py) is eight small operators, 21 us on a ten-token level's 576-wide
bf16 rows on a 2-core EPYC, and Scylla-3 runs seven a level. This kernel does the same
arithmetic in one pass. Its bits must be eager's: a first version that summed the squares in
another order moved the fp32 sum by a bit often enough that Scylla-3's bf16 outputs, and then
its tree, changed on CNN/DM (the bench's tau 1.304 -> 1.277 at the same weights). So it sums
as ATen's `sum` does over a contiguous row (aten/src/ATen/native/cpu/SumKernel.cpp:
`vectorized_inner_sum` over 8-float vectors, four accumulators, `multi_row_sum`'s cascade of
16-row levels, the leftover vectors into the first accumulator, the leftover floats, then the
eight lanes, in order), then mean = sum / H, 1 / sqrt(mean + eps), the row scaled and rounded to
x's dtype, times the weight in x's dtype. Where a torch build sums otherwise, or a model writes
its norm another way, `repeats` tells: drafts/layers.py asks it once per width, and
target_norms.py once per norm module of a target.

Built into the same extension as the few-row matmul (skinny_linear.py), after its v8 and load8 and
row_attention.py's to_float.
"""

from collections.abc import Callable

import torch

# Probe rows: magnitudes 1e-3 to 1e3, so a norm that rounds otherwise anywhere shows it.
PROBE_ROWS = 32

SOURCE = r"""
static inline v8 squares8(const float* p) { const v8 v = load8(p); return v * v; }
static inline v8 squares8(const at::BFloat16* p) {
  v8 v;
  for (int l = 0; l < 8; ++l) v[l] = to_float(p[l]);
  return v * v;
}

// ATen's fp32 sum of x[s]^2 over a contiguous row of H (see the module's docstring).
template <typename T>
static float aten_sum_of_squares(const T* x, int64_t H) {
  constexpr int ILP = 4, LEVELS = 4, LEVEL_POWER = 4;  // level_power = max(4, CeilLog2(n) / 4): 4 below 2^19 vectors
  const int64_t vectors = H / 8, groups = vectors / ILP;
  v8 acc[LEVELS][ILP] = {};
  int64_t i = 0;
  for (; i + (1 << LEVEL_POWER) <= groups;) {
    for (int j = 0; j < (1 << LEVEL_POWER); ++j, ++i)
      for (int k = 0; k < ILP; ++k) acc[0][k] += squares8(x + (i * ILP + k) * 8);
    for (int j = 1; j < LEVELS; ++j) {
      for (int k = 0; k < ILP; ++k) { acc[j][k] += acc[j - 1][k]; acc[j - 1][k] = v8{}; }
      if ((i & (((1 << LEVEL_POWER) - 1) << (j * LEVEL_POWER))) != 0) break;
    }
  }
  for (; i < groups; ++i)
    for (int k = 0; k < ILP; ++k) acc[0][k] += squares8(x + (i * ILP + k) * 8);
  for (int j = 1; j < LEVELS; ++j)
    for (int k = 0; k < ILP; ++k) acc[0][k] += acc[j][k];
  for (int64_t v = groups * ILP; v < vectors; ++v) acc[0][0] += squares8(x + v * 8);
  for (int k = 1; k < ILP; ++k) acc[0][0] += acc[0][k];
  float total = 0.0f;
  for (int64_t s = vectors * 8; s < H; ++s) { const float v = to_float(x[s]); total += v * v; }
  for (int l = 0; l < 8; ++l) total += acc[0][0][l];
  return total;
}

template <typename T>
static void rms_rows(const T* x, const T* w, T* out, int64_t rows, int64_t H, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * H;
    const float mean = aten_sum_of_squares(xr, H) / static_cast<float>(H);
    const float scale = 1.0f / std::sqrt(mean + eps);
    T* o = out + r * H;
    for (int64_t s = 0; s < H; ++s)
      o[s] = T(to_float(w[s]) * to_float(T(to_float(xr[s]) * scale)));
  }
}

// x [..., H], weight [H], one dtype -> x's shape, contiguous.
at::Tensor rms_norm(at::Tensor x, at::Tensor weight, double eps) {
  TORCH_CHECK(x.dim() >= 1 && weight.dim() == 1 && weight.size(0) == x.size(-1), "rms_norm: shapes");
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), "rms_norm: one dtype");
  x = x.contiguous();
  weight = weight.contiguous();
  auto out = at::empty_like(x);
  const int64_t H = x.size(-1), rows = H ? x.numel() / H : 0;
  const float e = static_cast<float>(eps);
  if (x.scalar_type() == at::kBFloat16)
    rms_rows<at::BFloat16>(x.data_ptr<at::BFloat16>(), weight.data_ptr<at::BFloat16>(), out.data_ptr<at::BFloat16>(),
                           rows, H, e);
  else if (x.scalar_type() == at::kFloat)
    rms_rows<float>(x.data_ptr<float>(), weight.data_ptr<float>(), out.data_ptr<float>(), rows, H, e);
  else TORCH_CHECK(false, "rms_norm: fp32 or bf16");
  return out;
}

TORCH_LIBRARY_FRAGMENT(scylla, m) { m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor"); }
TORCH_LIBRARY_IMPL(scylla, CPU, m) { m.impl("rms_norm", &rms_norm); }
"""


@torch.no_grad()
def repeats(norm: Callable[[torch.Tensor], torch.Tensor], weight: torch.Tensor, eps: float) -> bool:
    """Whether the operator with `weight` and `eps` gives `norm`'s bits (rows [n, width] -> [n, width])
    on random rows in weight's dtype. A norm that fails on plain rows is not one it stands for."""
    width = weight.shape[0]
    gen = torch.Generator().manual_seed(width)
    scales = torch.logspace(-3, 3, PROBE_ROWS)[:, None]  # [rows, 1]
    x = (torch.randn(PROBE_ROWS, width, generator=gen) * scales).to(weight.dtype)  # [rows, width]
    try:
        own = norm(x)
    except Exception:  # noqa: BLE001 - a model's own module may raise anything on inputs it was not built for
        return False
    return isinstance(own, torch.Tensor) and own.dtype == x.dtype and torch.equal(
        own, torch.ops.scylla.rms_norm(x, weight, eps))


__all__ = ["PROBE_ROWS", "SOURCE", "repeats"]
