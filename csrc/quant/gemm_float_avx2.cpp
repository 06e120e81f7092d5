// AVX2 GEMV / GEMM for float weights (F32, F16, BF16): fp32 FMA dots, no
// activation quantization; gemm_float_avx512.cpp's design at 8 lanes. Called
// from gemm_avx2 (kernels_avx2.cpp), which CPUs without AVX-512 run: the BF16
// output head is the largest matrix a decode token reads (1059 of 1874 MB on
// the q2 wide file of bench/compare.py).
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "quant/blocks.h"
#include "quant/kernels.h"
#include "quant/simd_avx2.h"

namespace pyv4 {
namespace qk {
namespace {

using namespace qblocks;

template <int N>
using IC = std::integral_constant<int, N>;

// Every kernel here sums a 32-element step of a row in 4 chains of 8 lanes.
// Chain u, lane j holds element k + 8u + j for F32 and F16 (8 consecutive
// values widened per vector); for BF16 one 32-byte load holds 16 values, and
// a bf16 is the high half of its fp32, so its even elements (chain 0, or 2 for
// the step's second load) are the dwords shifted left by 16 and its odd ones
// (chain 1, 3) the dwords with the low half cleared: half the loads and none
// of the widening shuffles (vpmovzxwd, one port on Intel cores) of element
// order. The activations go into the lanes in the same order: the kernels read
// them from a copy in chain order (order_chain), or X itself for F32 / F16.
// Then 8-element steps on chain 0 in element order, ((c0 + c1) + (c2 + c3))
// summed across lanes, and the last n % 8 products added one by one.
struct ConvF32 {
  static constexpr int kBytes = 4;
  static constexpr bool kPaired = false;
  static inline __m256 load8(const uint8_t* p) { return _mm256_loadu_ps(reinterpret_cast<const float*>(p)); }
  static inline __m256 chain8(const uint8_t* step, int u) { return load8(step + 8 * u * kBytes); }
  static inline float one(const uint8_t* p) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
};
struct ConvF16 {
  static constexpr int kBytes = 2;
  static constexpr bool kPaired = false;
  static inline __m256 load8(const uint8_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static inline __m256 chain8(const uint8_t* step, int u) { return load8(step + 8 * u * kBytes); }
  static inline float one(const uint8_t* p) { return f16_to_f32(load_u16(p)); }
};
struct ConvBF16 {
  static constexpr int kBytes = 2;
  static constexpr bool kPaired = true;
  static inline __m256 load8(const uint8_t* p) {
    const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  }
  static inline __m256 chain8(const uint8_t* step, int u) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(step + 32 * (u >> 1)));
    return _mm256_castsi256_ps(u & 1 ? _mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(0xffff0000u)))
                                     : _mm256_slli_epi32(v, 16));
  }
  static inline float one(const uint8_t* p) { return bf16_to_f32(load_u16(p)); }
};

// n activations (a multiple of 32) in Conv's chain order: for BF16 each 16 as
// their 8 even then their 8 odd elements; otherwise not needed (the kernels read X).
inline void order_chain_bf16(const float* x, int64_t n, float* out) {
  for (int64_t k = 0; k < n; k += 16) {
    const __m256 a = _mm256_loadu_ps(x + k), b = _mm256_loadu_ps(x + k + 8);
    // within 128-bit lanes: a0 a2 b0 b2 | a4 a6 b4 b6, then the qwords to a0a2 a4a6 b0b2 b4b6
    const __m256 ev = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
    const __m256 od = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
    _mm256_storeu_ps(out + k, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(ev), 0xD8)));
    _mm256_storeu_ps(out + k + 8, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(od), 0xD8)));
  }
}

// The chain sums' end, as every kernel here computes it: the lanes of
// (c0 + c1) + (c2 + c3), then the products past the last 8-element step.
template <class Conv>
inline float finish(__m256 c0, __m256 c1, __m256 c2, __m256 c3, const uint8_t* row, const float* x, int64_t n) {
  float s = hsum(_mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3)));
  for (int64_t k = n & ~int64_t(7); k < n; ++k) s += Conv::one(row + k * Conv::kBytes) * x[k];
  return s;
}

// Decode (1..3 tokens), one row: per token 4 FMA chains over 32-element
// steps, the 8-element steps on chain 0. One contiguous row stream per thread
// with a software prefetch into L2 (simd_avx2.h prefetch_ahead), as gemv_float on
// AVX-512 (there 1.35-1.46x over the hardware prefetcher alone; here the BF16
// head [129280x4096], 2 threads, Zen 4: 25.5 -> 47.9 GB/s with the chain
// order). XO: the first n32 columns of X's rows in chain order, row stride ldo.
template <class Conv, int T>
void gemv_float(const WeightMatrix& W, int64_t r, const float* X, int64_t ldx, const float* XO, int64_t ldo,
                int64_t t0, float* Y, int64_t ldy) {
  __m256 acc[T][4];
#pragma GCC unroll 3
  for (int t = 0; t < T; ++t)
    for (int u = 0; u < 4; ++u) acc[t][u] = _mm256_setzero_ps();
  const uint8_t* row = W.row(r);
  const int64_t n = W.cols, n32 = n & ~int64_t(31), n8 = n & ~int64_t(7);
  for (int64_t k = 0; k < n32; k += 32) {
    const uint8_t* step = row + k * Conv::kBytes;
    prefetch_ahead<32 * Conv::kBytes>(step);
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) {
      const __m256 w = Conv::chain8(step, u);
#pragma GCC unroll 3
      for (int t = 0; t < T; ++t)
        acc[t][u] = _mm256_fmadd_ps(w, _mm256_loadu_ps(XO + (t0 + t) * ldo + k + 8 * u), acc[t][u]);
    }
  }
  for (int64_t k = n32; k < n8; k += 8) {
    const __m256 w = Conv::load8(row + k * Conv::kBytes);
#pragma GCC unroll 3
    for (int t = 0; t < T; ++t) acc[t][0] = _mm256_fmadd_ps(w, _mm256_loadu_ps(X + (t0 + t) * ldx + k), acc[t][0]);
  }
#pragma GCC unroll 3
  for (int t = 0; t < T; ++t)
    Y[(t0 + t) * ldy + r] = finish<Conv>(acc[t][0], acc[t][1], acc[t][2], acc[t][3], row, X + (t0 + t) * ldx, n);
}

// Prefill, R rows x T tokens: exactly gemv_float's arithmetic per (row,
// token), one chain at a time, so the 16 ymm registers hold R*T accumulators
// (not 4*R*T) besides R weight vectors and an x, each loaded vector feeding R
// or T FMAs; in column chunks of kChunk, each chain's sums carried from chunk
// to chunk in `part` (L1), so every chain still adds its steps in column order
// while the chunk's x (T * 2 KB) and weights stay in L1 over the 4 chain
// passes (whole rows per pass read each x line twice from L2: 4 tokens ran
// at 0.6-0.65x the single-chain tiles these replaced). The next chunk's
// weights are prefetched in the first pass, R row streams at once.
constexpr int64_t kChunk = 512;

template <class Conv, int R, int T>
void tile_float_chains(const WeightMatrix& W, int64_t r, const float* X, int64_t ldx, const float* XO,
                       int64_t ldo, int64_t t0, float* Y, int64_t ldy) {
  const uint8_t* rows[R];
  for (int i = 0; i < R; ++i) rows[i] = W.row(r + i);
  const int64_t n = W.cols, n32 = n & ~int64_t(31), n8 = n & ~int64_t(7);
  __m256 part[4][R][T];
  for (int u = 0; u < 4; ++u)
    for (int i = 0; i < R; ++i)
      for (int t = 0; t < T; ++t) part[u][i][t] = _mm256_setzero_ps();
  // one chain's pass over a chunk, the chain a constant (chain8 picks by it)
  auto pass = [&](auto U, int64_t k0, int64_t k1) {
    constexpr int u = decltype(U)::value;
    __m256 acc[R][T];
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) acc[i][t] = part[u][i][t];
    for (int64_t k = k0; k < k1; k += 32) {
      __m256 w[R];
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) {
        if (u == 0)
          _mm_prefetch(reinterpret_cast<const char*>(rows[i] + (k + kChunk) * Conv::kBytes), _MM_HINT_T0);
        w[i] = Conv::chain8(rows[i] + k * Conv::kBytes, u);
      }
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) {
        const __m256 x = _mm256_loadu_ps(XO + (t0 + t) * ldo + k + 8 * u);
#pragma GCC unroll 4
        for (int i = 0; i < R; ++i) acc[i][t] = _mm256_fmadd_ps(w[i], x, acc[i][t]);
      }
    }
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) part[u][i][t] = acc[i][t];
  };
  for (int64_t k0 = 0; k0 < n32; k0 += kChunk) {
    const int64_t k1 = std::min(n32, k0 + kChunk);
    pass(IC<0>{}, k0, k1);
    pass(IC<1>{}, k0, k1);
    pass(IC<2>{}, k0, k1);
    pass(IC<3>{}, k0, k1);
  }
  for (int64_t k = n32; k < n8; k += 8)
    for (int i = 0; i < R; ++i) {
      const __m256 w = Conv::load8(rows[i] + k * Conv::kBytes);
      for (int t = 0; t < T; ++t)
        part[0][i][t] = _mm256_fmadd_ps(w, _mm256_loadu_ps(X + (t0 + t) * ldx + k), part[0][i][t]);
    }
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t)
      Y[(t0 + t) * ldy + r + i] =
          finish<Conv>(part[0][i][t], part[1][i][t], part[2][i][t], part[3][i][t], rows[i], X + (t0 + t) * ldx, n);
}

// Up to kGemvTokens tokens (decode, batched decode) the GEMV, in groups of 3
// per row; more (prefill): the panels of tiles below. Against the single-chain
// 2x4 tiles these replaced (whose sums depended on the batch), alternated runs
// on a busy Zen 4 host, 2 threads, BF16, ms: head [129280x4096] 1 token 44-49 ->
// 22-36, 2 tokens 48-55 -> 38-41, 4 tokens 52-66 -> 54-58 (the tiles below:
// 67-73), 8 tokens 82-100 -> 102-106 (tiles 107-110); prefill [1024x4096] x 128
// tokens 11.2-11.4 -> 10.5-13.4, [4096x4096] x 64 16-20 -> 22-27.
constexpr int64_t kGemvTokens = 8;

template <class Conv>
void gemm_float(const WeightMatrix& W, const float* X, int64_t ldx, int64_t n_tokens, float* Y, int64_t ldy,
                int64_t r0, int64_t r1) {
  const int64_t n32 = W.cols & ~int64_t(31);
  // BF16: the activations in chain order, once per call and thread
  const float* XO = X;
  int64_t ldo = ldx;
  if constexpr (Conv::kPaired) {
    float* b = reinterpret_cast<float*>(scratch_bytes(static_cast<size_t>(n_tokens * n32) * 4));
    for (int64_t t = 0; t < n_tokens; ++t) order_chain_bf16(X + t * ldx, n32, b + t * n32);
    XO = b;
    ldo = n32;
  }
  if (n_tokens <= kGemvTokens) {
    // a row's token groups back to back: the row comes from DRAM once, then from L1
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t t = 0; t < n_tokens; t += 3) {
        if (n_tokens - t == 1)
          gemv_float<Conv, 1>(W, r, X, ldx, XO, ldo, t, Y, ldy);
        else if (n_tokens - t == 2)
          gemv_float<Conv, 2>(W, r, X, ldx, XO, ldo, t, Y, ldy);
        else
          gemv_float<Conv, 3>(W, r, X, ldx, XO, ldo, t, Y, ldy);
      }
    return;
  }
  // Panels of rows (~256 KB of weights, kept in L2) times tiles of 4 tokens,
  // each panel's rows in tiles of 2.
  const int64_t P = std::max<int64_t>(2, std::min<int64_t>(64, (int64_t(256) << 10) / (W.cols * Conv::kBytes)) & ~int64_t(1));
  for (int64_t p0 = r0; p0 < r1; p0 += P) {
    const int64_t p1 = std::min(r1, p0 + P);
    for (int64_t t = 0; t < n_tokens; t += 4) {
      auto rows = [&](auto TT) {
        constexpr int Tn = decltype(TT)::value;
        int64_t r = p0;
        for (; r + 2 <= p1; r += 2) tile_float_chains<Conv, 2, Tn>(W, r, X, ldx, XO, ldo, t, Y, ldy);
        for (; r < p1; ++r) tile_float_chains<Conv, 1, Tn>(W, r, X, ldx, XO, ldo, t, Y, ldy);
      };
      switch (std::min<int64_t>(4, n_tokens - t)) {
        case 4: rows(IC<4>{}); break;
        case 3: rows(IC<3>{}); break;
        case 2: rows(IC<2>{}); break;
        default: rows(IC<1>{}); break;
      }
    }
  }
}

}  // namespace

void gemm_float_avx2(const WeightMatrix& W, const float* X, int64_t ldx, int64_t n_tokens, float* Y,
                     int64_t ldy, int64_t r0, int64_t r1) {
  switch (W.type) {
    case GGMLType::F32: gemm_float<ConvF32>(W, X, ldx, n_tokens, Y, ldy, r0, r1); return;
    case GGMLType::F16: gemm_float<ConvF16>(W, X, ldx, n_tokens, Y, ldy, r0, r1); return;
    case GGMLType::BF16: gemm_float<ConvBF16>(W, X, ldx, n_tokens, Y, ldy, r0, r1); return;
    default: return;
  }
}

}  // namespace qk
}  // namespace pyv4
