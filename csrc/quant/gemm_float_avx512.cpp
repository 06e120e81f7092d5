// AVX-512 GEMV / GEMM for float weights (F32, F16, BF16): fp32 FMA dots, no
// activation quantization. Called from gemm_avx512 (kernels_avx512.cpp) only
// when CPUID and XCR0 allow AVX-512; anonymous namespace, no library templates
// (CMakeLists.txt checks the object for merged symbols).
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "quant/kernels.h"

namespace pyv4 {
namespace qk {
namespace {

inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

template <int N>
using IC = std::integral_constant<int, N>;

// Every kernel here sums a 64-element step of a row in 4 chains of 16 lanes.
// Which element goes to which lane of chain u is the type's chain order:
// element k + 16u + j (lane j) for F32 and F16, which widen 16 consecutive
// values per vector; for BF16, the even and the odd elements of each half
// (ConvBF16::chain16). The activations go into the lanes in the same order:
// the kernels read them from a copy in chain order (order_chain: for F32 / F16
// a plain copy, or none).
struct ConvF32 {
  static constexpr int kBytes = 4;
  static constexpr bool kPaired = false;  // chain order = element order
  static inline __m512 load16(const uint8_t* p) {
    return _mm512_loadu_ps(reinterpret_cast<const float*>(p));
  }
  static inline __m512 chain16(const uint8_t* step, int u) { return load16(step + 16 * u * kBytes); }
  static inline __m512 load_masked(const uint8_t* p, __mmask16 m) {
    return _mm512_maskz_loadu_ps(m, reinterpret_cast<const float*>(p));
  }
};
struct ConvF16 {
  static constexpr int kBytes = 2;
  static constexpr bool kPaired = false;
  static inline __m512 load16(const uint8_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static inline __m512 chain16(const uint8_t* step, int u) { return load16(step + 16 * u * kBytes); }
  static inline __m512 load_masked(const uint8_t* p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
  }
};
struct ConvBF16 {
  static constexpr int kBytes = 2;
  static constexpr bool kPaired = true;
  // Chain u of the 64-element step at `step`: one 64-byte load of 32 values
  // (the first half for u = 0, 1, the second for u = 2, 3); a bf16 is the high
  // half of its fp32, so the even elements (u = 0, 2) are the dwords shifted
  // left by 16 and the odd ones (u = 1, 3) the dwords with the low half
  // cleared. Half the loads of 16 widened values per vector and no shuffle
  // (vpmovzxwd): in the decode GEMV, with its prefetch, the head streamed
  // 1.17x faster than widened in element order (see gemv_float).
  static inline __m512 chain16(const uint8_t* step, int u) {
    const __m512i v = _mm512_loadu_si512(step + 64 * (u >> 1));
    return _mm512_castsi512_ps(u & 1 ? _mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xffff0000u)))
                                     : _mm512_slli_epi32(v, 16));
  }
  static inline __m512 widen(__m256i v) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
  }
  static inline __m512 load16(const uint8_t* p) {
    return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static inline __m512 load_masked(const uint8_t* p, __mmask16 m) {
    return widen(_mm256_maskz_loadu_epi16(m, p));
  }
};

// n activations (a multiple of 64) in Conv's chain order: for BF16 each 32 as
// their 16 even then their 16 odd elements; otherwise a plain copy.
template <class Conv>
inline void order_chain(const float* x, int64_t n, float* out) {
  if constexpr (Conv::kPaired) {
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i od = _mm512_add_epi32(ev, _mm512_set1_epi32(1));
    for (int64_t k = 0; k < n; k += 32) {
      const __m512 a = _mm512_loadu_ps(x + k), b = _mm512_loadu_ps(x + k + 16);
      _mm512_storeu_ps(out + k, _mm512_permutex2var_ps(a, ev, b));
      _mm512_storeu_ps(out + k + 16, _mm512_permutex2var_ps(a, od, b));
    }
  } else {
    std::memcpy(out, x, static_cast<size_t>(n) * sizeof(float));
  }
}

// Decode (1 token), one row: the reference order of every float dot here, 4
// FMA chains over 64-element steps (lanes in the chain order above), a
// 16-element tail on chain 0, a masked tail on chain 1, then (c0+c1)+(c2+c3).
// tile_float_chunked (2..8 tokens) and tile_float_chains (prefill) compute the
// same sums, so a token's result does not depend on which other tokens share
// the call: chunked prefill, decode, batched decode and re-evaluation after
// truncate agree bitwise. xo: x's first n64 elements in chain order (x for
// the tails). One contiguous row stream per thread (4 interleaved short rows
// halve the DRAM throughput), and a software prefetch into L2 kPrefetch bytes
// ahead: the hardware prefetcher alone keeps too few lines in flight, above
// all when other processes share the memory (BF16 head [129280x4096], 2
// threads, Zen 4 under a busy host, 40 interleaved rounds, median of the
// paired ratios: prefetch 1.35-1.46x, with the paired chain order above
// 1.57-1.63x, p90 20 -> 37 GB/s; distances 8-32 KB alike, 4 KB 1.25x; into
// L1 (T0) or non-temporal: no gain).
constexpr int64_t kPrefetch = 8192;

template <class Conv>
void gemv_float(const WeightMatrix& W, int64_t r, const float* x, const float* xo, float* Y) {
  __m512 acc[4];
  for (int u = 0; u < 4; ++u) acc[u] = _mm512_setzero_ps();
  const uint8_t* row = W.row(r);
  const int64_t n = W.cols, n64 = n & ~int64_t(63), n16 = n & ~int64_t(15);
  for (int64_t k = 0; k < n64; k += 64) {
    const uint8_t* step = row + k * Conv::kBytes;
#pragma GCC unroll 4
    for (int l = 0; l < Conv::kBytes; ++l)  // the step's 64 * kBytes bytes, one line each
      _mm_prefetch(reinterpret_cast<const char*>(step + kPrefetch + 64 * l), _MM_HINT_T1);
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u)
      acc[u] = _mm512_fmadd_ps(Conv::chain16(step, u), _mm512_loadu_ps(xo + k + 16 * u), acc[u]);
  }
  for (int64_t k = n64; k < n16; k += 16)
    acc[0] = _mm512_fmadd_ps(Conv::load16(row + k * Conv::kBytes), _mm512_loadu_ps(x + k), acc[0]);
  if (n16 < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - n16)) - 1u);
    acc[1] = _mm512_fmadd_ps(Conv::load_masked(row + n16 * Conv::kBytes, m),
                             _mm512_maskz_loadu_ps(m, x + n16), acc[1]);
  }
  Y[r] = hsum(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

// Prefill (9+ tokens) with float weights, R rows x T tokens: exactly gemv_float's
// arithmetic per (row, token) (chains u = 0..3 over 64-element steps, the
// 16-element tail on chain 0, the masked tail on chain 1, (c0+c1)+(c2+c3)),
// but one chain at a time, so the registers hold R*T accumulators instead of
// 4*R*T: 4 rows x 6 tokens reuse each loaded vector 4 or 6 times (a 2 x 2
// tile: twice, ~55-100 Gops/s, bound by loads from L2). From 32 tokens on,
// these L2 panels beat tile_float_chunked (128 tokens: 1.15x); between 9 and
// 32 tokens the two measured within noise.
// XO: the first n64 columns of X's rows in chain order, row stride ldo.
template <class Conv, int R, int T>
void tile_float_chains(const WeightMatrix& W, int64_t r, const float* X, int64_t ldx,
                       const float* XO, int64_t ldo, int64_t t0, float* Y, int64_t ldy) {
  const uint8_t* rows[R];
  for (int i = 0; i < R; ++i) rows[i] = W.row(r + i);
  const float* xs[T];
  const float* xos[T];
  for (int t = 0; t < T; ++t) xs[t] = X + (t0 + t) * ldx, xos[t] = XO + (t0 + t) * ldo;
  const int64_t n = W.cols, n64 = n & ~int64_t(63), n16 = n & ~int64_t(15);
  alignas(64) float part[4][R][T][16];
  for (int u = 0; u < 4; ++u) {
    __m512 acc[R][T];
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) acc[i][t] = _mm512_setzero_ps();
    for (int64_t k = 16 * u; k < n64; k += 64) {
      __m512 w[R];
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) w[i] = Conv::chain16(rows[i] + (k - 16 * u) * Conv::kBytes, u);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const __m512 x = _mm512_loadu_ps(xos[t] + k);
#pragma GCC unroll 4
        for (int i = 0; i < R; ++i) acc[i][t] = _mm512_fmadd_ps(w[i], x, acc[i][t]);
      }
    }
    if (u == 0) {
      for (int64_t k = n64; k < n16; k += 16)
        for (int i = 0; i < R; ++i) {
          const __m512 w = Conv::load16(rows[i] + k * Conv::kBytes);
          for (int t = 0; t < T; ++t) acc[i][t] = _mm512_fmadd_ps(w, _mm512_loadu_ps(xs[t] + k), acc[i][t]);
        }
    }
    if (u == 1 && n16 < n) {
      const __mmask16 m = static_cast<__mmask16>((1u << (n - n16)) - 1u);
      for (int i = 0; i < R; ++i) {
        const __m512 w = Conv::load_masked(rows[i] + n16 * Conv::kBytes, m);
        for (int t = 0; t < T; ++t)
          acc[i][t] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(m, xs[t] + n16), acc[i][t]);
      }
    }
    for (int i = 0; i < R; ++i)
      for (int t = 0; t < T; ++t) _mm512_store_ps(part[u][i][t], acc[i][t]);
  }
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) {
      const __m512 c01 = _mm512_add_ps(_mm512_load_ps(part[0][i][t]), _mm512_load_ps(part[1][i][t]));
      const __m512 c23 = _mm512_add_ps(_mm512_load_ps(part[2][i][t]), _mm512_load_ps(part[3][i][t]));
      Y[(t0 + t) * ldy + r + i] = hsum(_mm512_add_ps(c01, c23));
    }
}

// Small batches (2..8 tokens: batched decode), R rows x T tokens: exactly
// gemv_float's arithmetic per (row, token) (chains u = 0..3 over 64-element
// steps, the 16-element tail on chain 0, the masked tail on chain 1,
// (c0+c1)+(c2+c3)), in column chunks of KC. Within a chunk one chain at a
// time; its R*T accumulators are carried from chunk to chunk through `part`
// (L1), so every chain still adds its steps in column order. The x rows come
// packed chunk by chunk (xp, gemm_float_small), so the T x chunks (T*KC*4
// bytes) and the R weight rows' chunk stay in L1 over the 4 chain passes:
// each weight line comes from DRAM once, and each x vector loaded from L1
// feeds R FMAs. Without the packing, x rows 16 KB apart (4096 columns) fall
// into the same L1 sets: 8 tokens thrashed (BF16 [32768x4096], 2 threads,
// 8 tokens: 33 -> 18 ms). The weights of the next chunk are prefetched
// (R row streams at once; 1.17x at 4 tokens over the hardware prefetcher
// alone).
template <class Conv, int R, int T, int KC>
void tile_float_chunked(const WeightMatrix& W, int64_t r, const float* xp, const float* X,
                        int64_t ldx, float* Y, int64_t ldy) {
  const uint8_t* rows[R];
  for (int i = 0; i < R; ++i) rows[i] = W.row(r + i);
  const float* xs[T];
  for (int t = 0; t < T; ++t) xs[t] = X + t * ldx;
  const int64_t n = W.cols, n64 = n & ~int64_t(63), n16 = n & ~int64_t(15);
  alignas(64) float part[4][R][T][16];
  for (int u = 0; u < 4; ++u)
    for (int i = 0; i < R; ++i)
      for (int t = 0; t < T; ++t) _mm512_store_ps(part[u][i][t], _mm512_setzero_ps());
  for (int64_t k0 = 0; k0 < n64; k0 += KC) {
    const int64_t k1 = std::min<int64_t>(n64, k0 + KC);
    const float* xc = xp + k0 * T - k0;  // token t's column k at xc + t * (k1 - k0) + k
#pragma GCC unroll 1
    for (int u = 0; u < 4; ++u) {
      __m512 acc[R][T];
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) acc[i][t] = _mm512_load_ps(part[u][i][t]);
      for (int64_t k = k0 + 16 * u; k < k1; k += 64) {
        __m512 w[R];
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i) {
          _mm_prefetch(reinterpret_cast<const char*>(rows[i] + (k + KC) * Conv::kBytes), _MM_HINT_T0);
          w[i] = Conv::chain16(rows[i] + (k - 16 * u) * Conv::kBytes, u);
        }
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          __m512 x = _mm512_load_ps(xc + t * (k1 - k0) + k);
          // One load per x vector: without this GCC folds the load into each
          // of the R FMAs (R loads instead of one).
          __asm__("" : "+v"(x));
#pragma GCC unroll 8
          for (int i = 0; i < R; ++i) acc[i][t] = _mm512_fmadd_ps(w[i], x, acc[i][t]);
        }
      }
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) _mm512_store_ps(part[u][i][t], acc[i][t]);
    }
  }
  for (int i = 0; i < R; ++i) {
    for (int64_t k = n64; k < n16; k += 16) {
      const __m512 w = Conv::load16(rows[i] + k * Conv::kBytes);
      for (int t = 0; t < T; ++t)
        _mm512_store_ps(part[0][i][t], _mm512_fmadd_ps(w, _mm512_loadu_ps(xs[t] + k),
                                                       _mm512_load_ps(part[0][i][t])));
    }
    if (n16 < n) {
      const __mmask16 m = static_cast<__mmask16>((1u << (n - n16)) - 1u);
      const __m512 w = Conv::load_masked(rows[i] + n16 * Conv::kBytes, m);
      for (int t = 0; t < T; ++t)
        _mm512_store_ps(part[1][i][t], _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(m, xs[t] + n16),
                                                       _mm512_load_ps(part[1][i][t])));
    }
    for (int t = 0; t < T; ++t) {
      const __m512 c01 = _mm512_add_ps(_mm512_load_ps(part[0][i][t]), _mm512_load_ps(part[1][i][t]));
      const __m512 c23 = _mm512_add_ps(_mm512_load_ps(part[2][i][t]), _mm512_load_ps(part[3][i][t]));
      Y[t * ldy + r + i] = hsum(_mm512_add_ps(c01, c23));
    }
  }
}

// Batched decode (2..8 tokens): x packed per column chunk [k0, k1) of up to
// kChunk columns, in chain order (token t's chunk at xp + k0 * n + t * (k1 - k0), n tokens;
// tails past the last 64-column step read X directly), then tiles of
// R rows x all tokens (R = 4, 3 for 7-8 tokens: R*T accumulators + R weight
// vectors + x fit the 32 zmm registers). One pass over the weights.
template <class Conv>
void gemm_float_small(const WeightMatrix& W, const float* X, int64_t ldx, int64_t n_tokens,
                      float* Y, int64_t ldy, int64_t r0, int64_t r1) {
  constexpr int kChunk = 512;  // 8 tokens: 16 KB of x (256: 1.11x slower at 6-8 tokens)
  const int64_t n64 = W.cols & ~int64_t(63);
  float* xp = reinterpret_cast<float*>(scratch_bytes(static_cast<size_t>(n_tokens * n64) * 4));
  for (int64_t k0 = 0; k0 < n64; k0 += kChunk)
    for (int64_t t = 0; t < n_tokens; ++t)
      order_chain<Conv>(X + t * ldx + k0, std::min<int64_t>(kChunk, n64 - k0),
                        xp + k0 * n_tokens + t * std::min<int64_t>(kChunk, n64 - k0));
  auto rows = [&](auto TT) {
    constexpr int T = decltype(TT)::value, R = T <= 6 ? 4 : 3;
    int64_t r = r0;
    for (; r + R <= r1; r += R) tile_float_chunked<Conv, R, T, kChunk>(W, r, xp, X, ldx, Y, ldy);
    for (; r < r1; ++r) tile_float_chunked<Conv, 1, T, kChunk>(W, r, xp, X, ldx, Y, ldy);
  };
  switch (n_tokens) {
    case 8: rows(IC<8>{}); break;
    case 7: rows(IC<7>{}); break;
    case 6: rows(IC<6>{}); break;
    case 5: rows(IC<5>{}); break;
    case 4: rows(IC<4>{}); break;
    case 3: rows(IC<3>{}); break;
    default: rows(IC<2>{}); break;
  }
}

template <class Conv>
void gemm_float(const WeightMatrix& W, const float* X, int64_t ldx, int64_t n_tokens, float* Y,
                int64_t ldy, int64_t r0, int64_t r1) {
  const int64_t n64 = W.cols & ~int64_t(63);
  if (n_tokens == 1) {
    const float* xo = X;
    if constexpr (Conv::kPaired) {
      float* b = reinterpret_cast<float*>(scratch_bytes(static_cast<size_t>(n64) * 4));
      order_chain<Conv>(X, n64, b);
      xo = b;
    }
    for (int64_t r = r0; r < r1; ++r) gemv_float<Conv>(W, r, X, xo, Y);
    return;
  }
  if (n_tokens <= 8) {
    gemm_float_small<Conv>(W, X, ldx, n_tokens, Y, ldy, r0, r1);
    return;
  }
  // Prefill: panels of rows (~512 KB of weights, kept in L2) times tiles of 6
  // tokens, each panel's rows in tiles of 4 (tile_float_chains). BF16: all
  // tokens' activations put in chain order once per call (a few % of the
  // first panel's time).
  const float* XO = X;
  int64_t ldo = ldx;
  if constexpr (Conv::kPaired) {
    float* b = reinterpret_cast<float*>(scratch_bytes(static_cast<size_t>(n_tokens * n64) * 4));
    for (int64_t t = 0; t < n_tokens; ++t) order_chain<Conv>(X + t * ldx, n64, b + t * n64);
    XO = b;
    ldo = n64;
  }
  const int64_t P = std::max<int64_t>(
      4, std::min<int64_t>(64, (int64_t(512) << 10) / (W.cols * Conv::kBytes)) & ~int64_t(3));
  for (int64_t p0 = r0; p0 < r1; p0 += P) {
    const int64_t p1 = std::min(r1, p0 + P);
    for (int64_t t = 0; t < n_tokens; t += 6) {
      auto rows = [&](auto TT) {
        constexpr int Tn = decltype(TT)::value;
        int64_t r = p0;
        for (; r + 4 <= p1; r += 4) tile_float_chains<Conv, 4, Tn>(W, r, X, ldx, XO, ldo, t, Y, ldy);
        for (; r < p1; ++r) tile_float_chains<Conv, 1, Tn>(W, r, X, ldx, XO, ldo, t, Y, ldy);
      };
      switch (std::min<int64_t>(6, n_tokens - t)) {
        case 6: rows(IC<6>{}); break;
        case 5: rows(IC<5>{}); break;
        case 4: rows(IC<4>{}); break;
        case 3: rows(IC<3>{}); break;
        case 2: rows(IC<2>{}); break;
        default: rows(IC<1>{}); break;
      }
    }
  }
}

}  // namespace

void gemm_float_avx512(const WeightMatrix& W, const float* X, int64_t ldx, int64_t n_tokens,
                       float* Y, int64_t ldy, int64_t r0, int64_t r1) {
  switch (W.type) {
    case GGMLType::F32: gemm_float<ConvF32>(W, X, ldx, n_tokens, Y, ldy, r0, r1); return;
    case GGMLType::F16: gemm_float<ConvF16>(W, X, ldx, n_tokens, Y, ldy, r0, r1); return;
    case GGMLType::BF16: gemm_float<ConvBF16>(W, X, ldx, n_tokens, Y, ldy, r0, r1); return;
    default: return;
  }
}

}  // namespace qk
}  // namespace pyv4
