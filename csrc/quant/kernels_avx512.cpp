// AVX-512 (F/BW/VL/DQ) + VNNI kernels, called only when CPUID and XCR0 say the
// CPU and OS support them. Anonymous namespace: no ODR clash with the AVX2 file.
//
// Integer weight types, activation format of quant/kernels.h. One zmm holds a
// pair of 32-blocks (64 codes); per pair and (row, token):
//   P  = vpdpbusd(0, u, q)            16 int32 lanes, 8 per block, exact
//   acc += dw * (dx * float(P) - cs)  dw, dx, cs broadcast to the 8 lanes of
//                                      their block; cs = (k/8) * dx * sum(q)
// Codes u (unsigned 8-bit): Q8_0 w+128 (k = 128), Q4_0 nibble (k = 8), MXFP4
// 2*E2M1+12 (k = 12), Q4_K nibble with dw = d*sc and the mins subtracted once
// per super-block. VNNI sums in int32, so nothing saturates (|u*q| <= 255*127).
// Weight rows are processed in tiles of 4 rows x up to 4 tokens: each weight
// pair is decoded once per tile and reused for every token in it.
#include <immintrin.h>

#include <cstring>
#include <type_traits>

#include "quant/blocks.h"
#include "quant/kernels.h"

namespace pyv4 {
namespace qk {
namespace {

using namespace qblocks;

inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

// [a x8, b x8] from the two floats in the low half of v.
inline __m512 spread2(__m128 v) {
  const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v));
}
inline __m128 load2f(const float* p) {
  return _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(p)));
}

// Nibbles of two 16-byte groups: [lo(v0), hi(v0), lo(v1), hi(v1)].
inline __m512i nibbles2x16(const uint8_t* p0, const uint8_t* p1) {
  const __m256i a = _mm256_set_m128i(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p1)),
                                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(p0)));
  const __m512i z = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 1, 0, 1, 2, 3, 2, 3),
                                             _mm512_castsi256_si512(a));
  const __m512i sh = _mm512_setr_epi64(0, 0, 0x0004000400040004LL, 0x0004000400040004LL, 0, 0,
                                       0x0004000400040004LL, 0x0004000400040004LL);
  return _mm512_and_si512(_mm512_srlv_epi16(z, sh), _mm512_set1_epi8(0x0F));
}
inline __m512i nibbles1x16(const uint8_t* p0) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p0));
  const __m256i both = _mm256_set_m128i(_mm_srli_epi16(v, 4), v);
  return _mm512_zextsi256_si512(_mm256_and_si256(both, _mm256_set1_epi8(0x0F)));
}

inline __m128 f16x2(const uint8_t* p0, const uint8_t* p1) {
  const uint32_t bits = load_u16(p0) | (static_cast<uint32_t>(load_u16(p1)) << 16);
  return _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(bits)));
}
inline __m128 f16x1(const uint8_t* p0) {
  return _mm_cvtph_ps(_mm_cvtsi32_si128(load_u16(p0)));
}

// ---- pair decoders: codes of blocks 2u, 2u+1 of a row and [dw x8, dw' x8] ----
struct DecQ8_0 {
  static inline __m512i pair(const uint8_t* row, int64_t u, __m512* DW) {
    const uint8_t* p = row + u * 68;
    *DW = spread2(f16x2(p, p + 34));
    const __m512i v = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2))),
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 36)), 1);
    return _mm512_xor_si512(v, _mm512_set1_epi8(static_cast<char>(0x80)));
  }
  static inline __m512i single(const uint8_t* row, int64_t u, __m512* DW) {
    const uint8_t* p = row + u * 68;
    *DW = spread2(f16x1(p));
    const __m256i v = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2)),
                                       _mm256_set1_epi8(static_cast<char>(0x80)));
    return _mm512_zextsi256_si512(v);
  }
};
struct DecQ4_0 {
  static inline __m512i pair(const uint8_t* row, int64_t u, __m512* DW) {
    const uint8_t* p = row + u * 36;
    *DW = spread2(f16x2(p, p + 18));
    return nibbles2x16(p + 2, p + 20);
  }
  static inline __m512i single(const uint8_t* row, int64_t u, __m512* DW) {
    const uint8_t* p = row + u * 36;
    *DW = spread2(f16x1(p));
    return nibbles1x16(p + 2);
  }
};
struct DecMXFP4 {
  static inline __m512i lut() {
    return _mm512_broadcast_i32x4(
        _mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0));
  }
  static inline __m512i pair(const uint8_t* row, int64_t u, __m512* DW) {
    const uint8_t* p = row + u * 34;
    *DW = spread2(_mm_unpacklo_ps(_mm_set_ss(e8m0_to_f32_half(p[0])),
                                  _mm_set_ss(e8m0_to_f32_half(p[17]))));
    return _mm512_shuffle_epi8(lut(), nibbles2x16(p + 1, p + 18));
  }
  static inline __m512i single(const uint8_t* row, int64_t u, __m512* DW) {
    const uint8_t* p = row + u * 34;
    *DW = spread2(_mm_set_ss(e8m0_to_f32_half(p[0])));
    // zero the upper half of the codes (the activations there are zero anyway)
    return _mm512_maskz_shuffle_epi8(0xFFFFFFFFULL, lut(), nibbles1x16(p + 1));
  }
};

template <int R, int T>
inline void pair_fma(__m512 (&acc)[R][T], const __m512i (&U)[R], const __m512 (&DW)[R],
                     const ActQ& a, int64_t t0, int64_t u) {
#pragma GCC unroll 4
  for (int t = 0; t < T; ++t) {
    const __m512i X = _mm512_loadu_si512(a.q(t0 + t) + 64 * u);
    const __m512 DX = spread2(load2f(a.d(t0 + t) + 2 * u));
    const __m512 KC = spread2(load2f(a.c(t0 + t) + 2 * u));
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
      const __m512 f = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), U[i], X));
      acc[i][t] = _mm512_fmadd_ps(_mm512_fmsub_ps(f, DX, KC), DW[i], acc[i][t]);
    }
  }
}

template <class Dec, int R, int T>
void tile_int(const WeightMatrix& W, int64_t r, const ActQ& a, int64_t t0, float* Y, int64_t ldy) {
  __m512 acc[R][T];
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) acc[i][t] = _mm512_setzero_ps();
  const uint8_t* rows[R];
  for (int i = 0; i < R; ++i) rows[i] = W.row(r + i);
  const int64_t np = a.nb / 2;
  for (int64_t u = 0; u < np; ++u) {
    __m512i U[R];
    __m512 DW[R];
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) U[i] = Dec::pair(rows[i], u, &DW[i]);
    pair_fma<R, T>(acc, U, DW, a, t0, u);
  }
  if (a.nb & 1) {
    __m512i U[R];
    __m512 DW[R];
    for (int i = 0; i < R; ++i) U[i] = Dec::single(rows[i], np, &DW[i]);
    pair_fma<R, T>(acc, U, DW, a, t0, np);
  }
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) Y[(t0 + t) * ldy + r + i] = hsum(acc[i][t]);
}

template <int R, int T>
void tile_q4k(const WeightMatrix& W, int64_t r, const ActQ& a, int64_t t0, float* Y,
              int64_t ldy) {
  __m512 acc[R][T];
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) acc[i][t] = _mm512_setzero_ps();
  const uint8_t* rows[R];
  for (int i = 0; i < R; ++i) rows[i] = W.row(r + i);
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  const int64_t nsb = a.nb / 8;
  for (int64_t sb = 0; sb < nsb; ++sb) {
    __m512 DSC[R], MN[R];
    for (int i = 0; i < R; ++i) {
      const uint8_t* p = rows[i] + sb * 144;
      const __m128 dd = f16x2(p, p + 2);
      alignas(8) uint8_t sc[8], mn[8];
      for (int j = 0; j < 8; ++j) q4k_scale_min(p + 4, j, &sc[j], &mn[j]);
      const __m256 scf = _mm256_cvtepi32_ps(
          _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sc))));
      const __m256 mnf = _mm256_cvtepi32_ps(
          _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(mn))));
      const __m256 d = _mm256_broadcastss_ps(dd);
      const __m256 dmin = _mm256_broadcastss_ps(_mm_movehdup_ps(dd));
      DSC[i] = _mm512_zextps256_ps512(_mm256_mul_ps(d, scf));
      MN[i] = _mm512_zextps256_ps512(_mm256_mul_ps(dmin, mnf));
    }
    for (int c = 0; c < 4; ++c) {
      const __m512i idx = _mm512_setr_epi32(2 * c, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c,
                                            2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1,
                                            2 * c + 1, 2 * c + 1, 2 * c + 1);
      __m512i U[R];
      __m512 DW[R];
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) {
        const __m256i q =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[i] + sb * 144 + 16 + 32 * c));
        U[i] = _mm512_and_si512(
            _mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1), m4);
        DW[i] = _mm512_permutexvar_ps(idx, DSC[i]);
      }
      const int64_t u = sb * 4 + c;
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) {
        const __m512i X = _mm512_loadu_si512(a.q(t0 + t) + 64 * u);
        const __m512 DX = spread2(load2f(a.d(t0 + t) + 2 * u));
#pragma GCC unroll 4
        for (int i = 0; i < R; ++i) {
          const __m512 f =
              _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), U[i], X));
          acc[i][t] = _mm512_fmadd_ps(_mm512_mul_ps(f, DX), DW[i], acc[i][t]);
        }
      }
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      const __m512 C = _mm512_zextps256_ps512(_mm256_loadu_ps(a.c(t0 + t) + sb * 8));
      for (int i = 0; i < R; ++i) acc[i][t] = _mm512_fnmadd_ps(MN[i], C, acc[i][t]);
    }
  }
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) Y[(t0 + t) * ldy + r + i] = hsum(acc[i][t]);
}

// ---- float weights: fp32 FMA dot, no activation quantization ----
struct ConvF32 {
  static constexpr int kBytes = 4;
  static inline __m512 load16(const uint8_t* p) {
    return _mm512_loadu_ps(reinterpret_cast<const float*>(p));
  }
  static inline __m512 load_masked(const uint8_t* p, __mmask16 m) {
    return _mm512_maskz_loadu_ps(m, reinterpret_cast<const float*>(p));
  }
};
struct ConvF16 {
  static constexpr int kBytes = 2;
  static inline __m512 load16(const uint8_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static inline __m512 load_masked(const uint8_t* p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
  }
};
struct ConvBF16 {
  static constexpr int kBytes = 2;
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

template <class Conv, int R, int T>
void tile_float(const WeightMatrix& W, int64_t r, const float* X, int64_t ldx, int64_t t0,
                float* Y, int64_t ldy) {
  __m512 acc[R][T];
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) acc[i][t] = _mm512_setzero_ps();
  const uint8_t* rows[R];
  for (int i = 0; i < R; ++i) rows[i] = W.row(r + i);
  const int64_t n = W.cols, n16 = n & ~int64_t(15);
  for (int64_t k = 0; k < n16; k += 16) {
    __m512 w[R];
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) w[i] = Conv::load16(rows[i] + k * Conv::kBytes);
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      const __m512 x = _mm512_loadu_ps(X + (t0 + t) * ldx + k);
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) acc[i][t] = _mm512_fmadd_ps(w[i], x, acc[i][t]);
    }
  }
  if (n16 < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - n16)) - 1u);
    __m512 w[R];
    for (int i = 0; i < R; ++i) w[i] = Conv::load_masked(rows[i] + n16 * Conv::kBytes, m);
    for (int t = 0; t < T; ++t) {
      const __m512 x = _mm512_maskz_loadu_ps(m, X + (t0 + t) * ldx + n16);
      for (int i = 0; i < R; ++i) acc[i][t] = _mm512_fmadd_ps(w[i], x, acc[i][t]);
    }
  }
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) Y[(t0 + t) * ldy + r + i] = hsum(acc[i][t]);
}

template <int N>
using IC = std::integral_constant<int, N>;

// Rows in tiles of R (then single rows), tokens in tiles of up to 4.
template <int R, class F>
void drive(int64_t r0, int64_t r1, int64_t n_tokens, F&& f) {
  auto tokens = [&](auto RR, int64_t r) {
    for (int64_t t = 0; t < n_tokens; t += 4) {
      switch (n_tokens - t >= 4 ? 4 : n_tokens - t) {
        case 4: f(RR, IC<4>{}, r, t); break;
        case 3: f(RR, IC<3>{}, r, t); break;
        case 2: f(RR, IC<2>{}, r, t); break;
        default: f(RR, IC<1>{}, r, t); break;
      }
    }
  };
  int64_t r = r0;
  for (; r + R <= r1; r += R) tokens(IC<R>{}, r);
  for (; r < r1; ++r) tokens(IC<1>{}, r);
}

}  // namespace

bool act_cscale_avx512(GGMLType t, float* cscale) {
  switch (t) {
    case GGMLType::Q8_0: *cscale = 128.0f / 8.0f; return true;  // k = 128
    case GGMLType::Q4_0: *cscale = 8.0f / 8.0f; return true;    // k = 8
    case GGMLType::MXFP4: *cscale = 12.0f / 8.0f; return true;  // k = 12
    case GGMLType::Q4_K: *cscale = 1.0f; return true;           // mins use dx*sum(q)
    default: return false;
  }
}

void gemm_avx512(const WeightMatrix& W, const ActQ* act, const float* X, int64_t ldx,
                 int64_t n_tokens, float* Y, int64_t ldy, int64_t r0, int64_t r1) {
  auto ints = [&](auto dec) {
    using Dec = decltype(dec);
    drive<4>(r0, r1, n_tokens, [&](auto R, auto T, int64_t r, int64_t t) {
      tile_int<Dec, decltype(R)::value, decltype(T)::value>(W, r, *act, t, Y, ldy);
    });
  };
  auto floats = [&](auto conv) {
    using Conv = decltype(conv);
    drive<4>(r0, r1, n_tokens, [&](auto R, auto T, int64_t r, int64_t t) {
      tile_float<Conv, decltype(R)::value, decltype(T)::value>(W, r, X, ldx, t, Y, ldy);
    });
  };
  switch (W.type) {
    case GGMLType::F32: floats(ConvF32{}); return;
    case GGMLType::F16: floats(ConvF16{}); return;
    case GGMLType::BF16: floats(ConvBF16{}); return;
    case GGMLType::Q8_0: ints(DecQ8_0{}); return;
    case GGMLType::Q4_0: ints(DecQ4_0{}); return;
    case GGMLType::MXFP4: ints(DecMXFP4{}); return;
    case GGMLType::Q4_K:
      drive<4>(r0, r1, n_tokens, [&](auto R, auto T, int64_t r, int64_t t) {
        tile_q4k<decltype(R)::value, decltype(T)::value>(W, r, *act, t, Y, ldy);
      });
      return;
    default: return;
  }
}

}  // namespace qk
}  // namespace pyv4
