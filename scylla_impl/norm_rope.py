"""A draft's RMSNorm and rotary embedding on the CPU, one operator each instead of six to eight.

A draft level scores a few tokens: its matmuls take about half of it, and the rest is small
elementwise operators of a few microseconds each. Eager RMSNorm (layers.py) is eight of them
(21 us on 10 x 576 bf16 rows, 2-core EPYC) and a rotary embedding seven (11 us); Scylla-3 runs
seven norms and six rotations a level. These kernels do the same arithmetic in one pass:

- rotary: x * cos + rotate_half(x) * sin, each product and the sum rounded to x's dtype as
  eager rounds them, so its bits are eager's.
- RMSNorm: fp32 sum of squares, mean, 1 / sqrt(mean + eps), the row scaled and rounded to x's
  dtype, times the weight in x's dtype, as eager; the sum runs in 16 fixed lanes, so it may
  differ from ATen's in the last bit of fp32, which a draft (a proposal, never an emitted token)
  tolerates. A row's result depends on that row alone.

Decode steps only (layers.py calls them without autograd, and not while torch.compile traces:
inductor fuses the eager operators itself); built into the same extension as the few-row matmul
(skinny_linear.py), after row_attention.py's source, whose load16 and to_float it uses.
"""

SOURCE = r"""
template <typename T>
static void rms_rows(const T* x, const T* w, T* out, int64_t rows, int64_t H, float eps) {
  const int64_t H16 = H / 16 * 16;
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * H;
    v16 acc{};
    for (int64_t s = 0; s < H16; s += 16) { const v16 v = load16(xr + s); acc += v * v; }
    float ss = 0.0f;
    for (int l = 0; l < 16; ++l) ss += acc[l];
    for (int64_t s = H16; s < H; ++s) { const float v = to_float(xr[s]); ss += v * v; }
    const float scale = 1.0f / std::sqrt(ss / static_cast<float>(H) + eps);
    T* o = out + r * H;
    for (int64_t s = 0; s < H; ++s) o[s] = T(to_float(w[s]) * to_float(T(to_float(xr[s]) * scale)));
  }
}

// x [..., H] with a contiguous last dim, weight [H], both one dtype -> x's shape, contiguous.
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps) {
  TORCH_CHECK(x.dim() >= 1 && weight.dim() == 1 && weight.size(0) == x.size(-1), "rms_norm: shapes");
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), "rms_norm: one dtype");
  x = x.contiguous();
  weight = weight.contiguous();
  auto out = torch::empty_like(x);
  const int64_t H = x.size(-1), rows = H ? x.numel() / H : 0;
  if (x.scalar_type() == at::kBFloat16)
    rms_rows<at::BFloat16>(x.data_ptr<at::BFloat16>(), weight.data_ptr<at::BFloat16>(), out.data_ptr<at::BFloat16>(),
                           rows, H, static_cast<float>(eps));
  else if (x.scalar_type() == at::kFloat)
    rms_rows<float>(x.data_ptr<float>(), weight.data_ptr<float>(), out.data_ptr<float>(), rows, H,
                    static_cast<float>(eps));
  else TORCH_CHECK(false, "rms_norm: fp32 or bf16");
  return out;
}

template <typename T>
static void rotate_rows(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, torch::Tensor& out) {
  const int64_t B = x.size(0), N = x.size(1), Q = x.size(2), D = x.size(3), half = D / 2;
  const T* xp = x.data_ptr<T>();
  const T* cp = cos.data_ptr<T>();
  const T* sp = sin.data_ptr<T>();
  T* op = out.data_ptr<T>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < Q; ++i) {
        const T* xr = xp + b * x.stride(0) + n * x.stride(1) + i * x.stride(2);
        const T* c = cp + b * cos.stride(0) + i * cos.stride(2);
        const T* s = sp + b * sin.stride(0) + i * sin.stride(2);
        T* o = op + ((b * N + n) * Q + i) * D;
        for (int64_t d = 0; d < D; ++d) {
          const float rot = d < half ? -to_float(xr[d + half]) : to_float(xr[d - half]);  // rotate_half
          o[d] = T(to_float(T(to_float(xr[d]) * to_float(c[d]))) + to_float(T(rot * to_float(s[d]))));
        }
      }
}

// x [B, N, Q, D]; cos, sin [B or 1, 1, Q, D]; last dims contiguous, one dtype -> [B, N, Q, D], contiguous.
torch::Tensor rotary(torch::Tensor x, torch::Tensor cos, torch::Tensor sin) {
  TORCH_CHECK(x.dim() == 4 && cos.dim() == 4 && cos.sizes() == sin.sizes() && cos.size(1) == 1 &&
              cos.size(2) == x.size(2) && cos.size(3) == x.size(3) && x.size(3) % 2 == 0 &&
              (cos.size(0) == x.size(0) || cos.size(0) == 1), "rotary: shapes");
  TORCH_CHECK(cos.scalar_type() == x.scalar_type() && sin.scalar_type() == x.scalar_type(), "rotary: one dtype");
  if (x.stride(3) != 1) x = x.contiguous();
  if (cos.stride(3) != 1) cos = cos.contiguous();
  if (sin.stride(3) != 1) sin = sin.contiguous();
  if (cos.size(0) != x.size(0)) { cos = cos.expand({x.size(0), 1, x.size(2), x.size(3)}); sin = sin.expand(cos.sizes()); }
  auto out = torch::empty(x.sizes(), x.options());
  if (x.scalar_type() == at::kBFloat16) rotate_rows<at::BFloat16>(x, cos, sin, out);
  else if (x.scalar_type() == at::kFloat) rotate_rows<float>(x, cos, sin, out);
  else TORCH_CHECK(false, "rotary: fp32 or bf16");
  return out;
}

TORCH_LIBRARY_FRAGMENT(scylla, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("rotary(Tensor x, Tensor cos, Tensor sin) -> Tensor");
}
TORCH_LIBRARY_IMPL(scylla, CPU, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("rotary", &rotary);
}
"""


__all__ = ["SOURCE"]
