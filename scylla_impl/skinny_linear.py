"""fp32 and bf16 matmuls with few rows on the CPU, at the speed of reading the weights once.

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
registers: one weight row at a time against every input row while they fit one register
block (8 rows with AVX-512, 4 with AVX2), two weight rows sharing each input load beyond that
(a block of 2 x 8 rows, 2 x 4 with AVX2; larger inputs walk the same weights again from L1),
with the next weight rows prefetched so the multiplies do not wait on memory (without the
prefetch, and with one weight row per block, 8 rows took 54.8 ms and 16 took 90.5). Two
weight rows per block from 5 input rows on, as the kernel once did, cost more than one where
the inputs fit (the same EPYC later, 2 threads, medians: fp32 5 rows 17.4 ms against 14.5, 8
rows 18.5 against 16.2; bf16 5-8 rows 9.2-9.4 against 7.3-8.4, 1-4 rows 7.1-7.6 either way).
Every output is summed in the same order whatever the number of rows, the blocking or the
threads, so a token scored alone (AR) and the same token scored inside a tree (verify) get
bit-identical logits, which BLAS does not promise.

bf16 (where the CPU has AVX512-BF16) multiplies bf16 pairs into fp32 sums: with AMX, 16
weight rows by up to 32 input rows per tile instruction (more rows reuse the weight block
from cache), so a tree verify costs little more than one row does; without AMX, VDPBF16PS
in the register blocks above. Measured on a 2-core Xeon with AMX over the same 211 matrices
(269 MB in bf16, which the profiler reads in 8.8 ms):

    rows              1      8     16     32     60    128    256
    torch (oneDNN)  23.1   23.7   24.6   26.1   33.1   43.7   57.9 ms
    VDPBF16PS        9.6   16.4   28.6   57.3      -      -      - ms
    AMX             12.1   14.5   15.3   17.9   26.2   41.5   80.5 ms

so AMX serves every row count up to MAX_ROWS_AMX where it is present: one instruction path
for every row count is what keeps a row's bits independent of its batch.

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

from scylla_impl import row_attention, row_norm, row_rotary
from workloads.errors import first_line

# Beyond 32 rows BLAS's blocking catches up (60 rows: 0.8-1.0x the kernel's time over repeated
# runs of the table), and a verify that wide is no longer a few-row step.
MAX_ROWS = 32
# bf16 through AMX tiles: a weight block read once serves any number of input rows, 32 at a
# time from cache, so a 60-token tree or 4 rows of 32-token trees stay exact; beyond 128 rows
# oneDNN's blocking is faster (the table above).
MAX_ROWS_AMX = 128

# -ffp-contract=off: otherwise GCC fuses `acc += w * x` into an FMA in some template instances
# and not in others (seen on Zen 4 with AVX-512), and a row alone rounds differently from the
# same row in a batch of 8.
PORTABLE_CFLAGS = ["-O3", "-ffp-contract=off", "-fopenmp"]
CFLAGS = [*PORTABLE_CFLAGS, "-march=native"]

# The kernels include only the ATen headers they use, not <torch/extension.h>: load_inline puts
# that first for the Python binding anyway, and a syntax check of the source for another CPU
# (tests/test_skinny_linear.py) then parses 8 s of headers instead of 21 (2-core EPYC).
SOURCE = r"""
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <algorithm>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>
#ifdef __AVX512F__
#include <immintrin.h>

// r[l] = row l of a 16 x 16 block -> r[e] = column e: pairs within 128-bit lanes, then lanes.
// Moves only, so any 32-bit contents (floats, bf16 pairs) pass bit for bit.
static inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
}
#endif

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

// f(rows, m) for the input rows from m, LIMIT (at most 8) at a time, with `rows` their count as
// a compile-time constant (std::integral_constant), so a block's accumulators are registers.
template <int LIMIT, typename F>
static void in_row_blocks(int64_t M, F&& f) {
  static_assert(LIMIT >= 4 && LIMIT <= 8, "row blocks of 4 to 8");
  for (int64_t m = 0; m < M; m += LIMIT) {
    switch (std::min<int64_t>(LIMIT, M - m)) {
      case 1: f(std::integral_constant<int, 1>{}, m); break;
      case 2: f(std::integral_constant<int, 2>{}, m); break;
      case 3: f(std::integral_constant<int, 3>{}, m); break;
      case 4: f(std::integral_constant<int, 4>{}, m); break;
      case 5: if constexpr (LIMIT >= 5) f(std::integral_constant<int, 5>{}, m); break;
      case 6: if constexpr (LIMIT >= 6) f(std::integral_constant<int, 6>{}, m); break;
      case 7: if constexpr (LIMIT >= 7) f(std::integral_constant<int, 7>{}, m); break;
      case 8: if constexpr (LIMIT >= 8) f(std::integral_constant<int, 8>{}, m); break;
    }
  }
}

// Every input row against weight rows n..n+NB-1, MB_MAX input rows at a time.
template <int NB>
static void weight_rows(const float* x, const float* w, float* y, int64_t M, int64_t K, int64_t N, int64_t n) {
  in_row_blocks<MB_MAX>(M, [&](auto rows, int64_t m) {
    block<NB, decltype(rows)::value>(x + m * K, w, y + m * N, K, N, n);
  });
}

// Whether this process may use AMX tiles: the build targets them and the kernel lets the
// process use them. Every other build says no here, and only here.
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && defined(__AVX512BW__)
#include <sys/syscall.h>
#include <unistd.h>
static bool amx_usable() {
  static const bool ok = [] {
    constexpr int ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
  }();
  return ok;
}
#else
static bool amx_usable() { return false; }
#endif

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
#include <immintrin.h>
#include <c10/util/BFloat16.h>

// A vector's lanes summed in a fixed tree: lane i with i + 8, then i + 4, i + 2, i + 1 (the
// order GCC's _mm512_reduce_add_ps uses; written out so no compiler picks another).
static inline float reduce1(__m512 v) {
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  const __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  const __m128 e = _mm_add_ps(q, _mm_movehl_ps(q, q));
  return _mm_cvtss_f32(_mm_add_ss(e, _mm_shuffle_ps(e, e, 1)));
}

// The sums of 16 vectors at once, in reduce1's tree, so a row summed here and one summed alone
// get the same bits: lane 4 (t % 4) + t / 4 of the result is the sum of v[t].
static inline __m512 reduce16(const __m512 v[16]) {
  __m512 a[8], b[4], c[2];
  for (int p = 0; p < 8; ++p)  // lanes i + (i + 8): v[2p] in lanes 0-7, v[2p + 1] in 8-15
    a[p] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0xee));
  for (int q = 0; q < 4; ++q)  // i + (i + 4): 128-bit lane l holds v[4q + l]
    b[q] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * q], a[2 * q + 1], 0x88),
                         _mm512_shuffle_f32x4(a[2 * q], a[2 * q + 1], 0xdd));
  for (int r = 0; r < 2; ++r)  // i + (i + 2), within each 128-bit lane
    c[r] = _mm512_add_ps(_mm512_shuffle_ps(b[2 * r], b[2 * r + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(b[2 * r], b[2 * r + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  return _mm512_add_ps(_mm512_shuffle_ps(c[0], c[1], _MM_SHUFFLE(2, 0, 2, 0)),  // i + (i + 1)
                       _mm512_shuffle_ps(c[0], c[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// bf16: 32 weights a load, multiplied in pairs into 16 fp32 lanes by one VDPBF16PS per input
// row, so no conversion is spent on the weights and an input row costs one instruction per 64
// weight bytes. The same order rule as fp32: lane l of an accumulator takes the pairs at
// k = 32 j + 2 l, then a fixed-order reduction; the tail is one masked load of zeros.
template <int NB, int MB>
static inline void block_bf16(const uint16_t* x, const uint16_t* w, at::BFloat16* y, int64_t K, int64_t N, int64_t n) {
  __m512 acc[NB][MB];
  for (int j = 0; j < NB; ++j)
    for (int i = 0; i < MB; ++i) acc[j][i] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 32) {
    const __mmask32 mask = K - k >= 32 ? ~__mmask32(0) : (__mmask32(1) << (K - k)) - 1;
    for (int j = 0; j < NB; ++j) __builtin_prefetch(w + (8 * NB + j) * K + k, 0, 1);
    __m512i xv[MB];
    for (int i = 0; i < MB; ++i) xv[i] = _mm512_maskz_loadu_epi16(mask, x + i * K + k);
    for (int j = 0; j < NB; ++j) {
      const __m512i wv = _mm512_maskz_loadu_epi16(mask, w + j * K + k);
      for (int i = 0; i < MB; ++i) acc[j][i] = _mm512_dpbf16_ps(acc[j][i], (__m512bh)wv, (__m512bh)xv[i]);
    }
  }
  if constexpr (NB * MB > 4) {  // one transposed reduction for all of them: about 3 instructions a sum, not 8
    __m512 v[16];
    for (int t = 0; t < 16; ++t) v[t] = t < NB * MB ? acc[t / MB][t % MB] : _mm512_setzero_ps();
    alignas(64) float sums[16];
    _mm512_store_ps(sums, reduce16(v));
    for (int t = 0; t < NB * MB; ++t) y[(t % MB) * N + n + t / MB] = at::BFloat16(sums[4 * (t % 4) + t / 4]);
  } else {
    for (int j = 0; j < NB; ++j)
      for (int i = 0; i < MB; ++i) y[i * N + n + j] = at::BFloat16(reduce1(acc[j][i]));
  }
}

// Input rows per VDPBF16PS register block (AVX512-BF16 implies AVX-512's 32 registers).
constexpr int MB_BF16 = 8;

template <int NB>
static void weight_rows_bf16(const uint16_t* x, const uint16_t* w, at::BFloat16* y, int64_t M, int64_t K, int64_t N,
                             int64_t n) {
  in_row_blocks<MB_BF16>(M, [&](auto rows, int64_t m) {
    block_bf16<NB, decltype(rows)::value>(x + m * K, w, y + m * N, K, N, n);
  });
}

// Weight rows [n0, n1) against every input row, VDPBF16PS.
static void rows_dpbf16(const uint16_t* xp, const uint16_t* wp, at::BFloat16* yp, int64_t M, int64_t K, int64_t N,
                        int64_t n0, int64_t n1) {
  const int64_t NB = M <= MB_BF16 ? 1 : 2;  // one weight row a block while the inputs fit one block
  for (int64_t n = n0; n < n1; n += NB) {
    if (NB == 2 && n + 2 <= n1) weight_rows_bf16<2>(xp, wp + n * K, yp, M, K, N, n);
    else for (int64_t r = n; r < std::min(n + NB, n1); ++r) weight_rows_bf16<1>(xp, wp + r * K, yp, M, K, N, r);
  }
}

#if defined(__AMX_TILE__) && defined(__AMX_BF16__)

// AMX: one TDPBF16PS multiplies 16 weight rows by 32 k of up to 16 input rows, 8192 products
// against VDPBF16PS's 32, so up to 32 input rows cost about one weight read, as one row does.
// The weights are the A tile as they lie in memory (16 rows, a row's 32 k in 64 bytes); the
// inputs are the B tile, laid out per call in pairs (k, k+1) per input row, padded to 16 rows.
// Each output sums its k blocks in order whatever the row count: a row alone and in a batch
// get the same bits.

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-1: outputs (16 weight rows x 16 input rows, fp32); 2: weights; 3-4: inputs.
static void tile_config() {
  TileConfig cfg;
  for (int t = 0; t < 5; ++t) { cfg.colsb[t] = 64; cfg.rows[t] = 16; }
  _tile_loadconfig(&cfg);
}

// The inputs as B tiles: per chunk of 32 input rows, per k block of 32, 16 pairs (k, k+1) x 32
// rows. 16 rows' 16 pairs are one in-register transpose. A chunk's second 16 rows are written
// only where the chunk holds more than 16 rows (only then is their tile loaded); rows past M
// in a written half are zeros.
static std::unique_ptr<uint32_t[]> amx_inputs(const uint32_t* pairs, int64_t M, int64_t K) {
  const int64_t P = K / 2, chunk = P * 32;
  std::unique_ptr<uint32_t[]> xt(new uint32_t[(M + 31) / 32 * chunk]);
  for (int64_t m0 = 0; m0 < M; m0 += 16) {
    uint32_t* half = xt.get() + m0 / 32 * chunk + m0 % 32;
    for (int64_t p0 = 0; p0 < P; p0 += 16) {
      __m512 r[16];
      for (int64_t l = 0; l < 16; ++l)
        r[l] = m0 + l < M ? _mm512_castsi512_ps(_mm512_loadu_si512(pairs + (m0 + l) * P + p0)) : _mm512_setzero_ps();
      transpose16(r);
      for (int e = 0; e < 16; ++e) _mm512_storeu_si512(half + (p0 + e) * 32, _mm512_castps_si512(r[e]));
    }
  }
  return xt;
}

// xt (amx_inputs) -> y for weight rows [n0, n1). A 16-row weight block is read from memory for the first
// chunk and from cache for the others.
static void rows_amx(const uint32_t* xt, const uint16_t* wp, at::BFloat16* yp, int64_t M, int64_t K, int64_t N,
                     int64_t n0, int64_t n1) {
  tile_config();
  alignas(64) float out[2][16][16];
  const int64_t KB = K / 32;
  for (int64_t n = n0; n < n1; n += 16) {
    const uint16_t* w = wp + n * K;
    for (int64_t m0 = 0; m0 < M; m0 += 32) {
      const uint32_t* xc = xt + m0 / 32 * (K / 2 * 32);
      const bool two = M - m0 > 16;
      _tile_zero(0);
      _tile_zero(1);
      for (int64_t kb = 0; kb < KB; ++kb) {
        if (m0 == 0)
          for (int r = 0; r < 16; ++r) __builtin_prefetch(w + (32 + r) * K + kb * 32, 0, 1);
        _tile_loadd(2, w + kb * 32, K * 2);
        _tile_loadd(3, xc + kb * 16 * 32, 128);
        _tile_dpbf16ps(0, 2, 3);
        if (two) {
          _tile_loadd(4, xc + kb * 16 * 32 + 16, 128);
          _tile_dpbf16ps(1, 2, 4);
        }
      }
      _tile_stored(0, out[0], 64);
      if (two) _tile_stored(1, out[1], 64);
      // out[t][r][c] is y[m0 + 16 t + c][n + r]: a column gathered is 16 outputs of one input row.
      const __m512i column = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                                _mm512_set1_epi32(16));
      for (int64_t m = m0; m < std::min(M, m0 + 32); ++m) {
        const float* base = &out[(m - m0) / 16][0][(m - m0) % 16];
        const __m512 row = _mm512_i32gather_ps(column, base, 4);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(yp + m * N + n), (__m256i)_mm512_cvtneps_pbh(row));
      }
    }
  }
  _tile_release();
}
#else
static std::unique_ptr<uint32_t[]> amx_inputs(const uint32_t*, int64_t, int64_t) { return nullptr; }
static void rows_amx(const uint32_t*, const uint16_t*, at::BFloat16*, int64_t, int64_t, int64_t, int64_t, int64_t) {}
#endif

static at::Tensor skinny_linear_bf16(const at::Tensor& x, const at::Tensor& w) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  auto y = at::empty({M, N}, x.options());
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const auto* wp = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
  at::BFloat16* yp = y.data_ptr<at::BFloat16>();
  // AMX takes whole 16-row weight blocks and k in blocks of 32; the rows past the last whole
  // block, and every row where K is not a multiple of 32, go through VDPBF16PS (chosen by the
  // shape of the weights, never by M, so a row's bits do not depend on its batch).
  const bool amx = amx_usable() && K % 32 == 0;
  const int64_t n_amx = amx ? N - N % 16 : 0;
  std::unique_ptr<uint32_t[]> xt;
  if (amx) xt = amx_inputs(reinterpret_cast<const uint32_t*>(xp), M, K);
  at::parallel_for(0, n_amx / 16, 8, [&](int64_t b0, int64_t b1) {
    rows_amx(xt.get(), wp, yp, M, K, N, b0 * 16, b1 * 16);
  });
  const int64_t NB = M <= MB_BF16 ? 1 : 2;
  at::parallel_for(0, (N - n_amx + NB - 1) / NB, 16 / NB, [&](int64_t b0, int64_t b1) {
    rows_dpbf16(xp, wp, yp, M, K, N, n_amx + b0 * NB, std::min(n_amx + b1 * NB, N));
  });
  return y;
}
constexpr bool BF16 = true;
#else
static at::Tensor skinny_linear_bf16(const at::Tensor&, const at::Tensor&) {
  TORCH_CHECK(false, "skinny_linear: this CPU has no AVX512-BF16");
}
constexpr bool BF16 = false;
#endif

// x [M, K] and w [N, K], contiguous, both fp32 or both bf16 -> x @ w.T [M, N].
at::Tensor skinny_linear(at::Tensor x, at::Tensor w) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "skinny_linear: shapes");
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous(), "skinny_linear: contiguous inputs");
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "skinny_linear: one dtype");
  if (x.scalar_type() == at::kBFloat16) return skinny_linear_bf16(x, w);
  TORCH_CHECK(x.scalar_type() == at::kFloat, "skinny_linear: fp32 or bf16");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  auto y = at::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  // While every input row fits one register block the weight stream is the limit and one weight
  // row at a time reads it best (the embedded target's matmuls on the EPYC: 5 rows 14.5 ms against
  // 17.4 with two, 8 rows 16.2 against 18.5); beyond, two weight rows share each input load, which
  // halves the loads per multiply.
  const int64_t NB = M <= MB_MAX ? 1 : 2;
  at::parallel_for(0, (N + NB - 1) / NB, 16 / NB, [&](int64_t b0, int64_t b1) {
    for (int64_t n = b0 * NB; n < std::min(b1 * NB, N); n += NB) {
      if (NB == 2 && n + 2 <= N) weight_rows<2>(xp, wp + n * K, yp, M, K, N, n);
      else for (int64_t r = n; r < std::min(n + NB, N); ++r) weight_rows<1>(xp, wp + r * K, yp, M, K, N, r);
    }
  });
  return y;
}

// Whether this build multiplies bf16 (the CPU has AVX512-BF16), and with AMX tiles; fp32 it always does.
bool bf16_supported() { return BF16; }
bool amx_supported() { return amx_usable(); }

// The operator a compiled graph calls (scylla_impl/compiled.py), registered from C++: defined
// in Python (torch.library.custom_op) each of a step's 211 calls went through Python, and the
// compiled AR step of the embedded target took 35.9 ms instead of 31.4 (fp32, 2 threads).
TORCH_LIBRARY(scylla, m) { m.def("skinny_linear(Tensor x, Tensor weight) -> Tensor"); }
TORCH_LIBRARY_IMPL(scylla, CPU, m) { m.impl("skinny_linear", &skinny_linear); }
"""

# One extension: the matmul, then the attention (row_attention.py), which uses transpose16 above,
# then a draft's rotary embedding (row_rotary.py), which uses the attention's to_float, and its
# RMSNorm (row_norm.py), which uses v8 and load8 above and to_float.
SOURCES = (SOURCE, row_attention.SOURCE, row_rotary.SOURCE, row_norm.SOURCE)
FUNCTIONS = ("skinny_linear", "bf16_supported", "amx_supported")


def build(name: str, folder: Path, cflags: list[str] = CFLAGS):
    """Compile SOURCES with `cflags` into `folder` (reused when already built) and load it;
    cpp_extension's errors pass through. Registers the `scylla` operators: once a process."""
    from torch.utils import cpp_extension

    return cpp_extension.load_inline(name, cpp_sources=list(SOURCES), functions=list(FUNCTIONS), extra_cflags=cflags,
                                     build_directory=str(folder), verbose=False)


def _read_cpu_flags() -> str:
    """This CPU's instruction-set flags (/proc/cpuinfo), or what platform says elsewhere."""
    try:
        return next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def cpu_signature() -> str:
    """What the binary depends on: the source and flags, this CPU's instruction set (-march=native),
    torch and Python. A machine that differs in any of them builds its own."""
    text = "\n".join([*SOURCES, *CFLAGS, _read_cpu_flags(), platform.machine(), torch.__version__, sys.version])
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
    _ninja_on_path()
    name = f"skinny_linear_{cpu_signature()}"
    # The machine's cache, not SCYLLA_HOME: the binary belongs to the CPU, not to a data folder.
    folder = Path(platformdirs.user_cache_dir("scylla-bench")) / "kernels" / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not any(folder.glob("*.so")):
            print("compiling the CPU kernels for few-row decode steps (once per machine, about a minute)",
                  file=sys.stderr, flush=True)
        module = build(name, folder)
    except (OSError, RuntimeError, ImportError) as err:  # no compiler or ninja here, or the build failed
        print(f"note: CPU matmul kernel unavailable ({first_line(err)}); decode steps use torch's matmul and attention",
              file=sys.stderr, flush=True)
        return None
    torch.library.register_fake("scylla::skinny_linear")(_fake)
    torch.library.register_fake("scylla::row_attention")(row_attention.fake)
    global _DTYPES
    _DTYPES = (torch.float32, torch.bfloat16) if module.bf16_supported() else (torch.float32,)
    _ROWS[torch.bfloat16] = MAX_ROWS_AMX if module.amx_supported() else MAX_ROWS
    return module.skinny_linear


# The dtypes the built kernel multiplies (bf16 where the CPU has AVX512-BF16); empty until
# kernel() has built it. Compiled graphs read this, not the cached call.
_DTYPES: tuple[torch.dtype, ...] = ()
_ROWS: dict[torch.dtype, int] = {}  # the most rows the kernel takes, per dtype, once built


def max_rows(dtype: torch.dtype) -> int:
    """The most rows the built kernel takes in `dtype` (MAX_ROWS_AMX for bf16 with AMX)."""
    return _ROWS.get(dtype, MAX_ROWS)


def dtypes() -> tuple[torch.dtype, ...]:
    """The dtypes the kernel takes on this machine; () where it cannot be built."""
    kernel()
    return _DTYPES


def built_dtypes() -> tuple[torch.dtype, ...]:
    """`dtypes()` once something has built the kernels (installing them on a model does), ()
    before: what code that also runs while a graph is traced reads."""
    return _DTYPES


def kernel_takes(x: torch.Tensor, *others: torch.Tensor) -> bool:
    """A decode step's tensors the extension's row operators (row_norm.py, row_rotary.py) take:
    on the CPU, in one dtype the extension was built for, no autograd, not traced by
    torch.compile (which fuses the eager operators they stand for itself)."""
    return (x.device.type == "cpu" and x.dtype in built_dtypes()
            and all(o.dtype == x.dtype for o in others) and not torch.compiler.is_compiling()
            and not (torch.is_grad_enabled() and (x.requires_grad or any(o.requires_grad for o in others))))


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
    """F.linear, through the kernel where it applies: on the CPU, in a dtype the kernel takes
    here (`dtypes()`), at most `max_rows(dtype)` rows, no autograd, not inside `off()`."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    # A compiled graph is always a decode step (training never compiles), and tracing cannot
    # read the context variable.
    compiling = torch.compiler.is_compiling()
    applies = ((compiling or _ENABLED.get()) and 0 < rows <= max_rows(x.dtype)
               and x.dtype == weight.dtype in (torch.float32, torch.bfloat16)
               and x.device.type == weight.device.type == "cpu" and weight.is_contiguous()
               and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)))
    if compiling:
        run = torch.ops.scylla.skinny_linear if applies and x.dtype in built_dtypes() else None
    else:
        run = kernel() if applies and x.dtype in dtypes() else None
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
    """Route `model`'s CPU Linear layers through the kernel where it builds and takes their
    dtype; returns how many layers now use it (0 where it is unavailable or nothing qualifies)."""
    linears = [m for m in model.modules() if type(m) is nn.Linear and m.weight.device.type == "cpu"
               and m.weight.dtype in (torch.float32, torch.bfloat16) and m.weight.is_contiguous()]
    linears = [m for m in linears if m.weight.dtype in dtypes()] if linears else []
    if not linears:
        return 0
    for module in linears:
        module.__class__ = SkinnyLinear
    return len(linears)


__all__ = ["MAX_ROWS", "MAX_ROWS_AMX", "max_rows", "SkinnyLinear", "built_dtypes", "dtypes", "install", "kernel",
           "kernel_takes", "linear", "off"]
