"""Attention for decode steps whose result for a query does not depend on what else is scored.

A speculative decoder is lossless when the target scores each tree token exactly as an AR
step scores it. The tree verify and the AR step attend over different key layouts: the AR
step's keys are the prefix and the token's accepted ancestors, contiguous; the verify's are
the same keys with the token's siblings and cousins interleaved (masked) and the cache's
length grown by the tree. SDPA's CPU kernel sums each query's terms in vector lanes chosen
by a key's slot and in blocks sized by the number of keys, so the two sums round
differently: in bf16 on the embedded target, the tree token at slot L + 8 and the same token
at slot L + 1 got logits up to 0.4 apart, and speculative outputs parted from AR on half of
12 MT-bench prompts even with the few-row matmuls exact (skinny_linear.py).

This kernel sums over the keys a query can see, in slot order, skipping masked ones: key j
of what a query sees is the j-th term whatever layout it came in. The dot products run
over the head dimension in fixed lanes; softmax takes the exact maximum, then exponentials
and sums in that order, in fp32 for fp32 and bf16 inputs alike. It serves decode steps (at
most MAX_QUERIES queries per row) on the CPU for plain attention (no soft-capping, sinks or
dropout); prefills and everything else go to SDPA. Built with the few-row matmul kernel
(skinny_linear.kernel()).
"""

import torch

# Beyond this many queries a row is a prefill: SDPA's blocked kernel is faster there, and a
# prefill's attention is the same in the AR and speculative runs.
MAX_QUERIES = 64

SOURCE = r"""
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <c10/util/BFloat16.h>
#include <cmath>
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

typedef float v16 __attribute__((vector_size(64)));

static inline float to_float(float x) { return x; }
static inline float to_float(at::BFloat16 x) { return static_cast<float>(x); }

// 16 elements from p as fp32 (bf16 widened exactly).
static inline v16 load16(const float* p) { v16 v; std::memcpy(&v, p, sizeof(v)); return v; }
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef uint8_t u8x16 __attribute__((vector_size(16)));
static inline v16 load16(const at::BFloat16* p) {  // bf16 is fp32's top half: widen, shift
  u16x16 h;
  std::memcpy(&h, p, sizeof(h));
  const u32x16 w = __builtin_convertvector(h, u32x16) << 16;
  v16 v;
  std::memcpy(&v, &w, sizeof(v));
  return v;
}
// a * b + c: one fused instruction where the CPU has AVX-512 (the same one for every query
// and key, so the rule that a score depends on its query and key alone holds either way).
static inline v16 fma16(v16 a, v16 b, v16 c) {
#ifdef __AVX512F__
  return (v16)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#else
  return a * b + c;
#endif
}

// exp(x) for x <= 0, elementwise (a lane's result depends on its own input only): x = n ln2 + r
// with r in [0, ln2), 2^n from the exponent bits, e^r by a degree-6 polynomial (rel. error
// below 2e-7). Below -87 it returns 0, as softmax wants of a term that small.
static inline v16 exp16(v16 x) {
  x = (x > -88.0f) ? x : v16{} - 88.0f;  // -inf (a masked key) too, kept in int range
  const v16 t = x * 1.44269504088896341f;
  i32x16 n = __builtin_convertvector(t, i32x16);
  n -= (__builtin_convertvector(n, v16) > t) ? 1 : 0;  // floor
  const v16 nf = __builtin_convertvector(n, v16);
  const v16 r = (x - nf * 0.693145751953125f) - nf * 1.428606765330187e-06f;
  v16 p = v16{} + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const i32x16 bits = (n + 127) << 23;
  v16 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return (x > -87.0f) ? p * scale : v16{};
}

// transpose16 (16 x 16 floats in registers, under AVX-512) comes from skinny_linear.SOURCE,
// which is built before this source in one unit (skinny_linear.kernel()).

// kt [D][32], columns c..c+15: the w keys from slot s0 (zeros after them) as fp32, the head
// dimension outermost, so that 16 keys' terms for one d sit in one vector.
template <typename T>
static void keys_by_dim(const T* k, int64_t ks, int64_t s0, int64_t w, int64_t D, float* kt) {
#ifdef __AVX512F__
  const int64_t D16 = D - D % 16;  // 16 d a time in registers, the rest one by one
  for (int64_t d = 0; d < D16; d += 16) {
    __m512 r[16];
    for (int64_t l = 0; l < 16; ++l) r[l] = l < w ? (__m512)load16(k + (s0 + l) * ks + d) : _mm512_setzero_ps();
    transpose16(r);
    for (int e = 0; e < 16; ++e) _mm512_storeu_ps(kt + (d + e) * 32, r[e]);
  }
#else
  const int64_t D16 = 0;
#endif
  for (int64_t l = 0; l < 16; ++l)
    for (int64_t d = D16; d < D; ++d) kt[d * 32 + l] = l < w ? to_float(k[(s0 + l) * ks + d]) : 0.0f;
}

// For RB query rows r0..: acc[r] [D] = sum over the slots s that row sees, in slot order, of
// p[r][s] * value s; total[r] = sum of those p[r][s], in the same order. Rows run side by side
// (one load of a value serves RB of them), each its own chain of sums, so a row's sums are
// what it gets alone. NC = D / 16 where the accumulators fit registers, 0 for any D.
template <typename T, int NC, int RB>
static void weigh_rows(const float* p, const uint8_t* const* sees, int64_t S, const T* v, int64_t vs, int64_t D,
                       float* acc, float* total) {
  if constexpr (NC > 0) {
    v16 a[RB][NC] = {};
    float t[RB] = {};
    for (int64_t s = 0; s < S; ++s) {
      const T* value = v + s * vs;
      v16 val[NC];
      for (int c = 0; c < NC; ++c) val[c] = load16(value + 16 * c);
      for (int r = 0; r < RB; ++r) {
        if (!sees[r][s]) continue;
        const float w = p[r * S + s];
        const v16 pv = v16{} + w;
        for (int c = 0; c < NC; ++c) a[r][c] = fma16(pv, val[c], a[r][c]);
        t[r] += w;
      }
    }
    for (int r = 0; r < RB; ++r) {
      std::memcpy(acc + r * D, a[r], sizeof(a[r]));
      total[r] = t[r];
    }
  } else {
    const int64_t D16 = D - D % 16;
    for (int r = 0; r < RB; ++r) {
      float* o = acc + r * D;
      std::fill(o, o + D, 0.0f);
      float t = 0.0f;
      for (int64_t s = 0; s < S; ++s) {
        if (!sees[r][s]) continue;
        const T* value = v + s * vs;
        const float w = p[r * S + s];
        const v16 pv = v16{} + w;
        for (int64_t d = 0; d < D16; d += 16) {
          const v16 sum = fma16(pv, load16(value + d), load16(o + d));
          std::memcpy(o + d, &sum, sizeof(sum));
        }
        for (int64_t d = D16; d < D; ++d) o[d] += w * to_float(value[d]);
        t += w;
      }
      total[r] = t;
    }
  }
}

template <typename T>
static void weigh(const float* p, const uint8_t* const* sees, int64_t S, const T* v, int64_t vs, int64_t D,
                  float* acc, float* total) {
  if (D == 64) {
    weigh_rows<T, 4, 4>(p, sees, S, v, vs, D, acc, total);
  } else if (D == 128) {  // 2 rows a pass keep the 16 accumulators in registers
    weigh_rows<T, 8, 2>(p, sees, S, v, vs, D, acc, total);
    weigh_rows<T, 8, 2>(p + 2 * S, sees + 2, S, v, vs, D, acc + 2 * D, total + 2);
  } else {
    weigh_rows<T, 0, 4>(p, sees, S, v, vs, D, acc, total);
  }
}

// Query rows r0..r1 (a multiple of 4 apart; row j * Q + i is query i of head j, rows past G * Q
// are padding) of the G heads that share one KV head, in one batch row: queries at stride qh
// per head and qs per query, keys/values at stride ks/vs per slot, the additive mask [Q, S]
// -> out, query i of head j at out + i * os + j * D.
// Scores take 16 keys a time in lanes, each summed over d in order, so a score depends on its
// query and key only; softmax and the weighted sum of values then run over the slots a query
// sees, in slot order.
template <typename T>
static void attend_rows(const T* queries, int64_t qh, int64_t qs, int64_t r0, int64_t r1, const T* k, int64_t ks,
                        const T* v, int64_t vs, const T* mask, int64_t G, int64_t Q, int64_t S, int64_t D,
                        float scale, T* out, int64_t os) {
  const int64_t R = G * Q, n = r1 - r0, S16 = S - S % 16;
  std::vector<float> q(n * D), kt(D * 32), p(n * S), acc(4 * D), total(4);
  for (int64_t r = 0; r < n && r0 + r < R; ++r) {
    const T* query = queries + (r0 + r) / Q * qh + (r0 + r) % Q * qs;
    for (int64_t d = 0; d < D; ++d) q[r * D + d] = to_float(query[d]);
  }
  std::vector<uint8_t> sees(Q * S), blind(S, 0);  // 1 where query i sees slot s; padding sees nothing
  for (int64_t i = 0; i < Q; ++i) {
    for (int64_t s = 0; s < S16; s += 16) {
      const u8x16 seen = __builtin_convertvector(load16(mask + i * S + s) > -1e30f, u8x16);
      std::memcpy(sees.data() + i * S + s, &seen, sizeof(seen));
    }
    for (int64_t s = S16; s < S; ++s) sees[i * S + s] = to_float(mask[i * S + s]) > -1e30f;
  }
  // Scores, 32 keys a time: 4 queries x 2 vectors of keys are 8 chains of sums in flight.
  for (int64_t s0 = 0; s0 < S; s0 += 32) {
    const int64_t w0 = std::min<int64_t>(16, S - s0), w1 = std::max<int64_t>(0, std::min<int64_t>(16, S - s0 - 16));
    keys_by_dim(k, ks, s0, w0, D, kt.data());
    keys_by_dim(k, ks, s0 + 16, w1, D, kt.data() + 16);
    for (int64_t i0 = 0; i0 < n; i0 += 4) {
      v16 a0 = {}, a1 = {}, a2 = {}, a3 = {}, b0 = {}, b1 = {}, b2 = {}, b3 = {};
      const float* qi = q.data() + i0 * D;
      for (int64_t d = 0; d < D; ++d) {
        const v16 ka = load16(kt.data() + d * 32), kb = load16(kt.data() + d * 32 + 16);
        const v16 q0 = v16{} + qi[d], q1 = v16{} + qi[D + d], q2 = v16{} + qi[2 * D + d], q3 = v16{} + qi[3 * D + d];
        a0 = fma16(q0, ka, a0), b0 = fma16(q0, kb, b0);
        a1 = fma16(q1, ka, a1), b1 = fma16(q1, kb, b1);
        a2 = fma16(q2, ka, a2), b2 = fma16(q2, kb, b2);
        a3 = fma16(q3, ka, a3), b3 = fma16(q3, kb, b3);
      }
      const v16 lo[4] = {a0, a1, a2, a3}, hi[4] = {b0, b1, b2, b3};
      for (int64_t i = 0; i < 4; ++i) {
        std::memcpy(p.data() + (i0 + i) * S + s0, &lo[i], w0 * sizeof(float));
        std::memcpy(p.data() + (i0 + i) * S + s0 + 16, &hi[i], w1 * sizeof(float));
      }
    }
  }
  // Softmax numerators: exp(score - the row's top score) where seen, 0 elsewhere.
  std::vector<const uint8_t*> row_sees(n);
  const float minus_inf = -std::numeric_limits<float>::infinity();
  for (int64_t r = 0; r < n; ++r) {
    const int64_t i = (r0 + r) % Q;
    const uint8_t* seen = row_sees[r] = r0 + r < R ? sees.data() + i * S : blind.data();
    const T* m = mask + i * S;
    float* row = p.data() + r * S;
    v16 tops = v16{} + minus_inf;
    for (int64_t s = 0; s < S16; s += 16) {
      u8x16 bytes;
      std::memcpy(&bytes, seen + s, sizeof(bytes));
      const v16 x = (__builtin_convertvector(bytes, i32x16) != 0) ? load16(row + s) * scale + load16(m + s)
                                                                   : v16{} + minus_inf;
      tops = (x > tops) ? x : tops;
      std::memcpy(row + s, &x, sizeof(x));
    }
    float top = minus_inf;
    for (int e = 0; e < 16; ++e) top = std::max(top, tops[e]);
    for (int64_t s = S16; s < S; ++s) {
      row[s] = seen[s] ? row[s] * scale + to_float(m[s]) : minus_inf;
      top = std::max(top, row[s]);
    }
    if (top == minus_inf) top = 0.0f;  // sees nothing: all zeros
    for (int64_t s = 0; s < S16; s += 16) {
      const v16 e = exp16(load16(row + s) - top);
      std::memcpy(row + s, &e, sizeof(e));
    }
    for (int64_t s = S16; s < S; ++s) row[s] = exp16(v16{} + (row[s] - top))[0];
  }
  for (int64_t i0 = 0; i0 < n; i0 += 4) {
    weigh<T>(p.data() + i0 * S, row_sees.data() + i0, S, v, vs, D, acc.data(), total.data());
    for (int64_t r = 0; r < 4 && r0 + i0 + r < R; ++r) {
      const int64_t j = (r0 + i0 + r) / Q, i = (r0 + i0 + r) % Q;
      T* o = out + i * os + j * D;
      // A query that sees nothing (never in a decode step) gets zeros, as SDPA's masked rows.
      for (int64_t d = 0; d < D; ++d) o[d] = T(total[r] > 0.0f ? acc[r * D + d] / total[r] : 0.0f);
    }
  }
}

template <typename T>
static void attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                   double scale, at::Tensor& out) {
  const int64_t B = q.size(0), H = q.size(1), Q = q.size(2), D = q.size(3);
  const int64_t G = H / k.size(1), S = k.size(2);
  const int64_t KV = k.size(1), R4 = (G * Q + 3) / 4 * 4;
  const auto masks = mask.contiguous();  // [B, 1, Q, S]
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  const T* mp = masks.data_ptr<T>();
  T* op = out.data_ptr<T>();  // [B, Q, H, D]
  // Rows of queries split into parts where the (batch row, KV head) pairs alone would leave
  // threads idle: each part widens its own key blocks, and a row's sums stay its own.
  const int64_t blocks = R4 / 4, threads = at::get_num_threads();
  const int64_t parts = std::max<int64_t>(1, std::min(blocks, (2 * threads + B * KV - 1) / (B * KV)));
  at::parallel_for(0, B * KV * parts, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / (KV * parts), g = t / parts % KV, part = t % parts;
      const int64_t r0 = blocks * part / parts * 4, r1 = blocks * (part + 1) / parts * 4;
      attend_rows<T>(qp + b * q.stride(0) + g * G * q.stride(1), q.stride(1), q.stride(2), r0, r1,
                     kp + b * k.stride(0) + g * k.stride(1), k.stride(2), vp + b * v.stride(0) + g * v.stride(1),
                     v.stride(2), mp + b * Q * S, G, Q, S, D, static_cast<float>(scale), op + (b * Q * H + g * G) * D,
                     H * D);
    }
  });
}

// q [B, H, Q, D]; k, v [B, Hkv, S, D] (last dim contiguous, H a multiple of Hkv); mask [B, 1, Q, S]
// additive, in q's dtype -> [B, Q, H, D].
at::Tensor row_attention(at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor mask, double scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && mask.dim() == 4, "row_attention: 4-D inputs");
  TORCH_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0 && k.sizes() == v.sizes() && k.size(3) == q.size(3),
              "row_attention: shapes");
  TORCH_CHECK(mask.size(0) == q.size(0) && mask.size(1) == 1 && mask.size(2) == q.size(2) && mask.size(3) == k.size(2),
              "row_attention: mask shape");
  TORCH_CHECK(k.stride(3) == 1 && v.stride(3) == 1, "row_attention: contiguous head dim");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type() &&
              mask.scalar_type() == q.scalar_type(), "row_attention: one dtype");
  if (q.stride(3) != 1) q = q.contiguous();
  auto out = at::empty({q.size(0), q.size(2), q.size(1), q.size(3)}, q.options());
  if (q.scalar_type() == at::kBFloat16) attend<at::BFloat16>(q, k, v, mask, scale, out);
  else if (q.scalar_type() == at::kFloat) attend<float>(q, k, v, mask, scale, out);
  else TORCH_CHECK(false, "row_attention: fp32 or bf16");
  return out;
}

TORCH_LIBRARY_FRAGMENT(scylla, m) { m.def("row_attention(Tensor q, Tensor k, Tensor v, Tensor mask, float scale) -> Tensor"); }
TORCH_LIBRARY_IMPL(scylla, CPU, m) { m.impl("row_attention", &row_attention); }
"""


def fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """The operator's output, for tracing: [B, Q, H, D]."""
    return q.new_empty(q.shape[0], q.shape[2], q.shape[1], q.shape[3])


__all__ = ["MAX_QUERIES", "SOURCE", "fake"]
