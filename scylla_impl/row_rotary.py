"""A draft's rotary embedding on the CPU: one operator instead of seven, with eager's bits.

A draft level scores a few tokens: its matmuls take about half of it, and the rest is small
elementwise operators of a few microseconds each. The eager rotation in layers.py,
x * cos + rotate_half(x) * sin, is seven of them (11 us on a 10-token level's queries in bf16,
2-core EPYC), and Scylla-3 runs six a level. This kernel rounds each product and the sum to x's
dtype as eager rounds them, so its bits are eager's and a draft proposes what it proposed.

Decode steps only (layers.py calls it without autograd, and not while torch.compile traces:
inductor fuses the eager operators itself); built into the same extension as the few-row matmul
(skinny_linear.py), after row_attention.py's source, whose to_float it uses.
"""

SOURCE = r"""
template <typename T>
static void rotate_rows(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, at::Tensor& out) {
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
at::Tensor rotary(at::Tensor x, at::Tensor cos, at::Tensor sin) {
  TORCH_CHECK(x.dim() == 4 && cos.dim() == 4 && cos.sizes() == sin.sizes() && cos.size(1) == 1 &&
              cos.size(2) == x.size(2) && cos.size(3) == x.size(3) && x.size(3) % 2 == 0 &&
              (cos.size(0) == x.size(0) || cos.size(0) == 1), "rotary: shapes");
  TORCH_CHECK(cos.scalar_type() == x.scalar_type() && sin.scalar_type() == x.scalar_type(), "rotary: one dtype");
  if (x.stride(3) != 1) x = x.contiguous();
  if (cos.stride(3) != 1) cos = cos.contiguous();
  if (sin.stride(3) != 1) sin = sin.contiguous();
  if (cos.size(0) != x.size(0)) { cos = cos.expand({x.size(0), 1, x.size(2), x.size(3)}); sin = sin.expand(cos.sizes()); }
  auto out = at::empty(x.sizes(), x.options());
  if (x.scalar_type() == at::kBFloat16) rotate_rows<at::BFloat16>(x, cos, sin, out);
  else if (x.scalar_type() == at::kFloat) rotate_rows<float>(x, cos, sin, out);
  else TORCH_CHECK(false, "rotary: fp32 or bf16");
  return out;
}

TORCH_LIBRARY_FRAGMENT(scylla, m) { m.def("rotary(Tensor x, Tensor cos, Tensor sin) -> Tensor"); }
TORCH_LIBRARY_IMPL(scylla, CPU, m) { m.impl("rotary", &rotary); }
"""


__all__ = ["SOURCE"]
