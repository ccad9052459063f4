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
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <cmath>
#include <immintrin.h>
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
  typedef int32_t i32x16 __attribute__((vector_size(64)));
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

// acc [D] = sum over j < n, in order, of p[j] * value of slot seen[j]. NC: D / 16 where the
// accumulators fit registers (a head of 64 or 128), 0 for any D. Same sums either way.
template <typename T, int NC>
static void weigh_values(const float* p, const int64_t* seen, int64_t n, const T* v, int64_t vs, int64_t D,
                         float* acc) {
  if constexpr (NC > 0) {
    v16 a[NC] = {};
    for (int64_t j = 0; j < n; ++j) {
      const T* value = v + seen[j] * vs;
      const v16 pv = v16{} + p[j];
      for (int c = 0; c < NC; ++c) a[c] = fma16(pv, load16(value + 16 * c), a[c]);
    }
    std::memcpy(acc, a, sizeof(a));
  } else {
    const int64_t D16 = D - D % 16;
    std::fill(acc, acc + D, 0.0f);
    for (int64_t j = 0; j < n; ++j) {
      const T* value = v + seen[j] * vs;
      const v16 pv = v16{} + p[j];
      for (int64_t d = 0; d < D16; d += 16) {
        const v16 sum = fma16(pv, load16(value + d), load16(acc + d));
        std::memcpy(acc + d, &sum, sizeof(sum));
      }
      for (int64_t d = D16; d < D; ++d) acc[d] += p[j] * to_float(value[d]);
    }
  }
}

template <typename T>
static void weigh(const float* p, const int64_t* seen, int64_t n, const T* v, int64_t vs, int64_t D, float* acc) {
  if (D == 64) weigh_values<T, 4>(p, seen, n, v, vs, D, acc);
  else if (D == 128) weigh_values<T, 8>(p, seen, n, v, vs, D, acc);
  else weigh_values<T, 0>(p, seen, n, v, vs, D, acc);
}

// The G query heads that share one KV head, in one row: q [G * Q, D] (fp32, head-major,
// zero rows after it up to a multiple of 4), keys/values at stride ks/vs per slot, the queries' masks at stride mq
// per query and ms per slot (additive; below -1e30: not seen) -> out, query i of head j at
// out + i * os + j * D. Scores take 16 keys a time in lanes, each summed over d in order, so a
// score depends on its query and key only; softmax and the weighted sum of values then run
// over the keys a query sees, in slot order. The group's heads share each widened key block.
template <typename T>
static void attend_group(const float* q, const T* k, int64_t ks, const T* v, int64_t vs, const T* mask, int64_t mq,
                         int64_t ms, int64_t G, int64_t Q, int64_t S, int64_t D, float scale, T* out, int64_t os) {
  const int64_t D16 = D - D % 16, R = G * Q, R4 = (R + 3) / 4 * 4;
  std::vector<float> kt(D * 16), scores(R4 * S), kept(S + 16);
  std::vector<int64_t> seen(S);
  std::vector<float> acc(D);
  // bf16 values widened once when several queries read them (exact, so the sums are the same).
  std::vector<float> vf;
  if (!std::is_same<T, float>::value && G * Q >= 4) {
    vf.resize(S * D);
    for (int64_t s = 0; s < S; ++s)
      for (int64_t d = 0; d < D; ++d) vf[s * D + d] = to_float(v[s * vs + d]);
  }
  for (int64_t s0 = 0; s0 < S; s0 += 16) {
    const int64_t w = std::min<int64_t>(16, S - s0);
    if (w < 16) std::fill(kt.begin(), kt.end(), 0.0f);
    for (int64_t l = 0; l < w; ++l) {
      const T* key = k + (s0 + l) * ks;
      for (int64_t d = 0; d < D16; d += 16) {
        const v16 row = load16(key + d);
        for (int e = 0; e < 16; ++e) kt[(d + e) * 16 + l] = row[e];
      }
      for (int64_t d = D16; d < D; ++d) kt[d * 16 + l] = to_float(key[d]);
    }
    for (int64_t i0 = 0; i0 < R4; i0 += 4) {  // 4 queries share each load of the keys
      v16 d0 = {}, d1 = {}, d2 = {}, d3 = {};
      const float* qi = q + i0 * D;
      for (int64_t d = 0; d < D; ++d) {
        const v16 key = load16(kt.data() + d * 16);
        d0 = fma16(v16{} + qi[d], key, d0);
        d1 = fma16(v16{} + qi[D + d], key, d1);
        d2 = fma16(v16{} + qi[2 * D + d], key, d2);
        d3 = fma16(v16{} + qi[3 * D + d], key, d3);
      }
      const v16 dots[4] = {d0, d1, d2, d3};
      for (int64_t i = 0; i < 4; ++i) std::memcpy(scores.data() + (i0 + i) * S + s0, &dots[i], w * sizeof(float));
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    const int64_t j = r / Q, i = r % Q;
    T* o = out + i * os + j * D;
    int64_t n = 0;
    for (int64_t s = 0; s < S; ++s) {
      const float m = to_float(mask[i * mq + s * ms]);
      if (!(m > -1e30f)) continue;
      kept[n] = scores[r * S + s] * scale + m;
      seen[n++] = s;
    }
    if (n == 0) {  // a query that sees nothing (never in a decode step): zeros, as SDPA's masked rows
      for (int64_t d = 0; d < D; ++d) o[d] = T(0.0f);
      continue;
    }
    float top = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < n; ++j) top = std::max(top, kept[j]);
    for (int64_t j = 0; j < n; j += 16) {
      const v16 p = exp16(load16(kept.data() + j) - top);
      std::memcpy(kept.data() + j, &p, sizeof(p));
    }
    float total = 0.0f;
    for (int64_t j = 0; j < n; ++j) total += kept[j];
    if (!vf.empty()) weigh<float>(kept.data(), seen.data(), n, vf.data(), D, D, acc.data());
    else weigh<T>(kept.data(), seen.data(), n, v, vs, D, acc.data());
    for (int64_t d = 0; d < D; ++d) o[d] = T(acc[d] / total);
  }
}

template <typename T>
static void attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& mask,
                   double scale, torch::Tensor& out) {
  const int64_t B = q.size(0), H = q.size(1), Q = q.size(2), D = q.size(3);
  const int64_t G = H / k.size(1), S = k.size(2);
  const int64_t KV = k.size(1), R4 = (G * Q + 3) / 4 * 4;
  auto qf = torch::zeros({B, KV, R4, D}, q.options().dtype(torch::kFloat));  // per KV head, its G heads' queries
  qf.narrow(2, 0, G * Q).copy_(q.reshape({B, KV, G * Q, D}));
  const float* qp = qf.data_ptr<float>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  const T* mp = mask.data_ptr<T>();
  T* op = out.data_ptr<T>();  // [B, Q, H, D]
  at::parallel_for(0, B * KV, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / KV, g = t % KV;
      attend_group<T>(qp + (b * KV + g) * R4 * D, kp + b * k.stride(0) + g * k.stride(1), k.stride(2),
                      vp + b * v.stride(0) + g * v.stride(1), v.stride(2), mp + b * mask.stride(0),
                      mask.stride(2), mask.stride(3), G, Q, S, D, static_cast<float>(scale),
                      op + (b * Q * H + g * G) * D, H * D);
    }
  });
}

// q [B, H, Q, D]; k, v [B, Hkv, S, D] (last dim contiguous, H a multiple of Hkv); mask [B, 1, Q, S]
// additive, in q's dtype -> [B, Q, H, D].
torch::Tensor row_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor mask, double scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && mask.dim() == 4, "row_attention: 4-D inputs");
  TORCH_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0 && k.sizes() == v.sizes() && k.size(3) == q.size(3),
              "row_attention: shapes");
  TORCH_CHECK(mask.size(0) == q.size(0) && mask.size(1) == 1 && mask.size(2) == q.size(2) && mask.size(3) == k.size(2),
              "row_attention: mask shape");
  TORCH_CHECK(k.stride(3) == 1 && v.stride(3) == 1, "row_attention: contiguous head dim");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type() &&
              mask.scalar_type() == q.scalar_type(), "row_attention: one dtype");
  auto out = torch::empty({q.size(0), q.size(2), q.size(1), q.size(3)}, q.options());
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
