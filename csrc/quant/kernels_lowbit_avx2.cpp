// AVX2 + FMA + F16C kernels of the super-block weight types Q2_K, Q3_K, IQ2_XXS
// and IQ4_XS (math in quant/kernels.h), on activations in the plain layout.
// Per 32-element block b and (row, token):
//   Q2_K / Q3_K:  P = vpmaddwd(vpmaddubsw(c, q), a)   8 int32 lanes, the two
//                 sub-blocks' scales a_s in the low / high 128-bit halves
//                 acc += d * dx_b * P;  per super-block acc += -d2*m_s * hs_s
//   IQ2_XXS:      P = vpmaddwd(vpmaddubsw(u, q), 1),  u = signed grid + 43
//                 acc += dw * (dx_b * P - cs_b)       (cs = 43/8 * dx * sum q)
//   IQ4_XS:       P = vpmaddwd(vpmaddubsw(|v|, sign(q, v)), 1), v the signed level
//                 acc += dw * dx_b * P                (|v| <= 127: no saturation)
// vpmaddubsw cannot saturate: codes <= 7 (K types) or <= 86, |q| <= 127, so a
// pair is at most 2 * 86 * 127 = 21844.
// 1..3 tokens: one row at a time (each thread streams its rows); more: tiles of
// 2 rows x up to 4 tokens, each block decoded once per tile. Small tiles spread
// their sums over kSets accumulator sets: one dependent FMA chain per output
// would bound a GEMV by the FMA latency (4 cycles per block).
#include <immintrin.h>

#include <cstring>

#include "quant/blocks.h"
#include "quant/iq2xxs_grid.h"
#include "quant/kernels.h"
#include "quant/simd_avx2.h"
#include "quant/tile_drive.h"

namespace pyv4 {
namespace qk {
namespace {

using namespace qblocks;

inline __m256i load256(const uint8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// Per super-block and row of Q2_K / Q3_K: the 16 sub-block scales a_s as int16,
// -d2 * m_s as floats, and d.
struct KScales {
  alignas(32) int16_t a[16];
  alignas(32) float mneg[16];
  float d;
};

// Codes of block b (0..7) of a super-block at p (32 bytes, 0..3 or 0..7).
struct DecQ2_K {
  static constexpr size_t kBytes = sizeof(BlockQ2_K);
  static inline void scales(const uint8_t* p, KScales* k) {
    const BlockQ2_K* blk = reinterpret_cast<const BlockQ2_K*>(p);
    const __m128i s = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk->scales));
    const __m128i m4 = _mm_set1_epi8(0x0F);
    _mm256_store_si256(reinterpret_cast<__m256i*>(k->a), _mm256_cvtepu8_epi16(_mm_and_si128(s, m4)));
    const __m128i mn = _mm_and_si128(_mm_srli_epi16(s, 4), m4);
    const __m256 nd = _mm256_set1_ps(-_cvtsh_ss(blk->dmin));
    _mm256_store_ps(k->mneg, _mm256_mul_ps(nd, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(mn))));
    _mm256_store_ps(k->mneg + 8, _mm256_mul_ps(
        nd, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(mn, 8)))));
    k->d = _cvtsh_ss(blk->d);
  }
  static inline __m256i codes(const uint8_t* p, int b) {
    const BlockQ2_K* blk = reinterpret_cast<const BlockQ2_K*>(p);
    const __m256i v = load256(blk->qs + 32 * (b / 4));
    return _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(2 * (b % 4))),
                            _mm256_set1_epi8(3));
  }
};

struct DecQ3_K {
  static constexpr size_t kBytes = sizeof(BlockQ3_K);
  static inline void scales(const uint8_t* p, KScales* k) {
    const BlockQ3_K* blk = reinterpret_cast<const BlockQ3_K*>(p);
    uint64_t lo, hi;
    q3k_scales(blk->scales, &lo, &hi);
    const __m128i s = _mm_set_epi64x(static_cast<long long>(hi), static_cast<long long>(lo));
    const __m256i a = _mm256_sub_epi16(_mm256_cvtepu8_epi16(s), _mm256_set1_epi16(32));
    _mm256_store_si256(reinterpret_cast<__m256i*>(k->a), a);
    k->d = _cvtsh_ss(blk->d);
    const __m256 nd = _mm256_set1_ps(-4.0f * k->d);  // d2 = 4d, m_s = a_s
    _mm256_store_ps(k->mneg, _mm256_mul_ps(
        nd, _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(a)))));
    _mm256_store_ps(k->mneg + 8, _mm256_mul_ps(
        nd, _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(a, 1)))));
  }
  static inline __m256i codes(const uint8_t* p, int b) {
    const BlockQ3_K* blk = reinterpret_cast<const BlockQ3_K*>(p);
    const __m256i one = _mm256_set1_epi8(1);
    const __m256i lo = _mm256_and_si256(
        _mm256_srl_epi16(load256(blk->qs + 32 * (b / 4)), _mm_cvtsi32_si128(2 * (b % 4))),
        _mm256_set1_epi8(3));
    const __m256i hi =
        _mm256_and_si256(_mm256_srl_epi16(load256(blk->hmask), _mm_cvtsi32_si128(b)), one);
    return _mm256_or_si256(lo, _mm256_slli_epi16(hi, 2));
  }
};

// Independent accumulators per output of an R x T tile (see the file comment).
template <int R, int T>
constexpr int kSets = R * T == 1 ? 4 : R * T == 2 ? 2 : 1;

template <int S, int R, int T>
inline void init_sums(__m256 (&acc)[S][R][T]) {
  for (int s = 0; s < S; ++s)
    for (int i = 0; i < R; ++i)
      for (int t = 0; t < T; ++t) acc[s][i][t] = _mm256_setzero_ps();
}

template <int S, int R, int T>
inline void store_sums(__m256 (&acc)[S][R][T], float* Y, int64_t ldy, int64_t r, int64_t t0) {
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) {
      __m256 v = acc[0][i][t];
      for (int s = 1; s < S; ++s) v = _mm256_add_ps(v, acc[s][i][t]);
      Y[(t0 + t) * ldy + r + i] = hsum(v);
    }
}

template <class Dec, int R, int T>
void tile_k(const WeightMatrix& W, int64_t r, const ActQ& a, int64_t t0, float* Y, int64_t ldy) {
  constexpr int S = kSets<R, T>;
  __m256 acc[S][R][T];
  init_sums(acc);
  const uint8_t* rows[R];
  for (int i = 0; i < R; ++i) rows[i] = W.row(r + i);
  KScales ks[R];
  const int64_t nsb = a.nb / 8;
  for (int64_t sb = 0; sb < nsb; ++sb) {
    __m256 D[R];
    for (int i = 0; i < R; ++i) {
      Dec::scales(rows[i] + sb * Dec::kBytes, &ks[i]);
      D[i] = _mm256_set1_ps(ks[i].d);
    }
#pragma GCC unroll 8
    for (int b = 0; b < 8; ++b) {
      __m256i U[R], A[R];
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) {
        U[i] = Dec::codes(rows[i] + sb * Dec::kBytes, b);
        A[i] = _mm256_set_m128i(_mm_set1_epi16(ks[i].a[2 * b + 1]), _mm_set1_epi16(ks[i].a[2 * b]));
      }
      const int64_t blk = 8 * sb + b;
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) {
        const __m256i X = load256(reinterpret_cast<const uint8_t*>(a.q(t0 + t) + 32 * blk));
        const __m256 DX = _mm256_broadcast_ss(a.d(t0 + t) + blk);
#pragma GCC unroll 4
        for (int i = 0; i < R; ++i) {
          const __m256 f =
              _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(U[i], X), A[i]));
          acc[b % S][i][t] = _mm256_fmadd_ps(_mm256_mul_ps(f, DX), D[i], acc[b % S][i][t]);
        }
      }
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      const float* hs = a.h(t0 + t) + 16 * sb;
      const __m256 H0 = _mm256_loadu_ps(hs), H1 = _mm256_loadu_ps(hs + 8);
      for (int i = 0; i < R; ++i) {
        acc[0][i][t] = _mm256_fmadd_ps(_mm256_load_ps(ks[i].mneg), H0, acc[0][i][t]);
        acc[S - 1][i][t] = _mm256_fmadd_ps(_mm256_load_ps(ks[i].mneg + 8), H1, acc[S - 1][i][t]);
      }
    }
  }
  store_sums(acc, Y, ldy, r, t0);
}

// IQ2_XXS per super-block: dw of its 8 blocks, d * (0.5 + scale nibble) / 4 (the
// nibbles are the top bits of the sign words at qs + 8b + 4).
inline void iq2xxs_dw8(const uint8_t* p, float* dw) {
  const BlockIQ2_XXS* blk = reinterpret_cast<const BlockIQ2_XXS*>(p);
  const __m256i odd = _mm256_setr_epi32(1, 3, 5, 7, 1, 3, 5, 7);
  const __m256i w = _mm256_blend_epi32(_mm256_permutevar8x32_epi32(load256(blk->qs), odd),
                                       _mm256_permutevar8x32_epi32(load256(blk->qs + 32), odd), 0xF0);
  const __m256 s = _mm256_add_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(w, 28)), _mm256_set1_ps(0.5f));
  const __m256 d = _mm256_set1_ps(_cvtsh_ss(blk->d));
  _mm256_storeu_ps(dw, _mm256_mul_ps(_mm256_mul_ps(d, s), _mm256_set1_ps(0.25f)));
}

// Two table qwords into one 128-bit vector, straight from memory.
inline __m128i load2q(const uint64_t* a, const uint64_t* b) {
  const __m128i lo = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(a));
  return _mm_castpd_si128(_mm_loadh_pd(_mm_castsi128_pd(lo), reinterpret_cast<const double*>(b)));
}

// IQ2_XXS block b of the super-block at p: codes u = signed grid + 43.
inline __m256i iq2xxs_codes(const uint8_t* p, int b) {
  const uint8_t* q = reinterpret_cast<const BlockIQ2_XXS*>(p)->qs + 8 * b;
  uint32_t sg;
  std::memcpy(&sg, q + 4, 4);
  const uint64_t* G = kIq2xxsGrid;
  const uint64_t* M = kIq2SignMasks.m;
  const __m256i g = _mm256_set_m128i(load2q(G + q[2], G + q[3]), load2q(G + q[0], G + q[1]));
  const __m256i neg = _mm256_set_m128i(load2q(M + ((sg >> 14) & 127), M + ((sg >> 21) & 127)),
                                       load2q(M + (sg & 127), M + ((sg >> 7) & 127)));
  const __m256i k = _mm256_set1_epi8(43);
  return _mm256_blendv_epi8(_mm256_add_epi8(k, g), _mm256_sub_epi8(k, g), neg);
}

template <int R, int T>
void tile_iq2xxs(const WeightMatrix& W, int64_t r, const ActQ& a, int64_t t0, float* Y, int64_t ldy) {
  constexpr int S = kSets<R, T>;
  __m256 acc[S][R][T];
  init_sums(acc);
  const uint8_t* rows[R];
  for (int i = 0; i < R; ++i) rows[i] = W.row(r + i);
  const __m256i ones = _mm256_set1_epi16(1);
  alignas(32) float dw[R][8];
  for (int64_t sb = 0; sb < a.nb / 8; ++sb) {
    for (int i = 0; i < R; ++i) iq2xxs_dw8(rows[i] + sb * sizeof(BlockIQ2_XXS), dw[i]);
#pragma GCC unroll 8
    for (int b = 0; b < 8; ++b) {
      const int64_t blk = 8 * sb + b;
      __m256i U[R];
      __m256 DW[R];
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) {
        U[i] = iq2xxs_codes(rows[i] + sb * sizeof(BlockIQ2_XXS), b);
        DW[i] = _mm256_broadcast_ss(&dw[i][b]);
      }
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) {
        const __m256i X = load256(reinterpret_cast<const uint8_t*>(a.q(t0 + t) + 32 * blk));
        const __m256 DX = _mm256_broadcast_ss(a.d(t0 + t) + blk);
        const __m256 KC = _mm256_broadcast_ss(a.c(t0 + t) + blk);
#pragma GCC unroll 4
        for (int i = 0; i < R; ++i) {
          const __m256 f = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(U[i], X), ones));
          acc[b % S][i][t] = _mm256_fmadd_ps(_mm256_fmsub_ps(f, DX, KC), DW[i], acc[b % S][i][t]);
        }
      }
    }
  }
  store_sums(acc, Y, ldy, r, t0);
}

// IQ4_XS block b of the super-block at p: the signed levels of its 32 codes, and dw.
inline __m256i iq4xs_levels(const uint8_t* p, int b, float* dw) {
  const BlockIQ4_XS& blk = *reinterpret_cast<const BlockIQ4_XS*>(p);
  *dw = _cvtsh_ss(blk.d) * static_cast<float>(iq4xs_scale(blk, b) - 32);
  const __m128i lut = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4nlValues));
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.qs + 16 * b));
  const __m128i m4 = _mm_set1_epi8(0x0F);
  return _mm256_set_m128i(_mm_shuffle_epi8(lut, _mm_and_si128(_mm_srli_epi16(v, 4), m4)),
                          _mm_shuffle_epi8(lut, _mm_and_si128(v, m4)));
}

template <int R, int T>
void tile_iq4xs(const WeightMatrix& W, int64_t r, const ActQ& a, int64_t t0, float* Y,
                int64_t ldy) {
  constexpr int S = kSets<R, T>;
  __m256 acc[S][R][T];
  init_sums(acc);
  const uint8_t* rows[R];
  for (int i = 0; i < R; ++i) rows[i] = W.row(r + i);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t sb = 0; sb < a.nb / 8; ++sb)
#pragma GCC unroll 8
  for (int b = 0; b < 8; ++b) {
    const int64_t blk = 8 * sb + b;
    __m256i V[R], M[R];
    __m256 DW[R];
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
      float dw;
      V[i] = iq4xs_levels(rows[i] + sb * sizeof(BlockIQ4_XS), b, &dw);
      M[i] = _mm256_sign_epi8(V[i], V[i]);  // |level|
      DW[i] = _mm256_set1_ps(dw);
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      const __m256i X = load256(reinterpret_cast<const uint8_t*>(a.q(t0 + t) + 32 * blk));
      const __m256 DX = _mm256_broadcast_ss(a.d(t0 + t) + blk);
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) {
        const __m256i p16 = _mm256_maddubs_epi16(M[i], _mm256_sign_epi8(X, V[i]));
        const __m256 f = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
        acc[b % S][i][t] = _mm256_fmadd_ps(_mm256_mul_ps(f, DX), DW[i], acc[b % S][i][t]);
      }
    }
  }
  store_sums(acc, Y, ldy, r, t0);
}

// The sum of 16 int8 at p: vpsadbw of the bytes biased to unsigned (q + 128).
inline int sum16(const int8_t* p) {
  const __m128i v = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), _mm_set1_epi8(-128));
  const __m128i s = _mm_sad_epu8(v, _mm_setzero_si128());
  return _mm_cvtsi128_si32(s) + _mm_extract_epi32(s, 2) - 16 * 128;
}

}  // namespace

void half_sums_avx2(const int8_t* qs, const float* dx, int64_t n_tokens, int64_t nb,
                    int64_t nb_pad, ActLayout layout, float* hs) {
  for (int64_t t = 0; t < n_tokens; ++t) {
    const int8_t* q = qs + t * nb_pad * 32;
    const float* d = dx + t * nb_pad;
    float* h = hs + t * 2 * nb_pad;
    if (layout != ActLayout::Lane) {
      // each sub-block's 16 elements are contiguous (a GEMV's per-call cost: the
      // scalar loop below took ~2 us per token of 4096, ~2 % of a Q2_K expert GEMV)
      for (int64_t b = 0; b < nb; ++b) {
        const int8_t* e = layout == ActLayout::Quad ? q + 128 * (b / 4) + 16 * (b % 4) : q + 32 * b;
        h[2 * b] = d[b] * static_cast<float>(sum16(e));
        h[2 * b + 1] = d[b] * static_cast<float>(sum16(e + (layout == ActLayout::Quad ? 64 : 16)));
      }
      for (int64_t s = 2 * nb; s < 2 * nb_pad; ++s) h[s] = 0.0f;
      continue;
    }
    for (int64_t b = 0; b < nb; ++b) {
      // elements 4k..4k+3 of block b (k = 0..7): 0..15 are sub-block 2b, 16..31 2b + 1
      int s[2] = {0, 0};
      for (int k = 0; k < 8; ++k) {
        const int8_t* e = q + 512 * (b / 16) + 4 * (b % 16) + 64 * k;  // lane layout
        s[k / 4] += e[0] + e[1] + e[2] + e[3];
      }
      h[2 * b] = d[b] * static_cast<float>(s[0]);
      h[2 * b + 1] = d[b] * static_cast<float>(s[1]);
    }
    for (int64_t s = 2 * nb; s < 2 * nb_pad; ++s) h[s] = 0.0f;
  }
}

void gemm_lowbit_avx2(const WeightMatrix& W, const ActQ& act, int64_t n_tokens, float* Y,
                      int64_t ldy, int64_t r0, int64_t r1) {
  drive_rows<2>(r0, r1, n_tokens, [&](auto R, auto T, int64_t r, int64_t t) {
    constexpr int kR = decltype(R)::value, kT = decltype(T)::value;
    if (W.type == GGMLType::Q2_K)
      tile_k<DecQ2_K, kR, kT>(W, r, act, t, Y, ldy);
    else if (W.type == GGMLType::Q3_K)
      tile_k<DecQ3_K, kR, kT>(W, r, act, t, Y, ldy);
    else if (W.type == GGMLType::IQ2_XXS)
      tile_iq2xxs<kR, kT>(W, r, act, t, Y, ldy);
    else
      tile_iq4xs<kR, kT>(W, r, act, t, Y, ldy);
  });
}

}  // namespace qk
}  // namespace pyv4
