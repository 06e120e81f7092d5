// AVX-512 (F/BW/VL/DQ) + VNNI kernels, called only when CPUID and XCR0 say the
// CPU and OS support them. Anonymous namespace: no ODR clash with the AVX2 file.
//
// Integer weight types use the quad activation layout of quant/kernels.h. A
// group of 4 weight blocks is decoded into two zmm of unsigned codes, A (elements
// 0..15 of each block) and B (elements 16..31), matching the activations, so
//   P  = vpdpbusd(vpdpbusd(0, A, xa), B, xb)   16 int32 lanes, 4 per block, exact
//   acc += dw * (dx * float(P) - cs)            dw, dx, cs spread to their 4 lanes;
//                                                cs = (k/4) * dx * sum(q)
// Codes: Q8_0 w+128 (k = 128), Q4_0 nibble (k = 8), MXFP4 2*E2M1+12 (k = 12),
// Q4_K nibble with dw = d*sc and the mins subtracted once per super-block
// (acc -= sum_i dmin*m_i * dx_i*sum(q)_i). VNNI sums in int32: no saturation.
// Weight rows are processed in tiles of 4 rows x up to 4 tokens: each weight
// group is decoded once per tile and reused for every token in it.
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

// [a x4, b x4, c x4, d x4] from the four floats of v.
inline __m512 spread4(__m128 v) {
  const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v));
}

inline __m512i load4x16(const uint8_t* p, int64_t stride) {
  const __m512i z = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m512i z1 =
      _mm512_inserti32x4(z, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + stride)), 1);
  const __m512i z2 =
      _mm512_inserti32x4(z1, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 * stride)), 2);
  return _mm512_inserti32x4(z2, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 3 * stride)),
                            3);
}

// Four f16 scales at stride bytes apart, spread.
inline __m512 f16x4(const uint8_t* p, int64_t stride) {
  const uint64_t bits = static_cast<uint64_t>(load_u16(p)) |
                        (static_cast<uint64_t>(load_u16(p + stride)) << 16) |
                        (static_cast<uint64_t>(load_u16(p + 2 * stride)) << 32) |
                        (static_cast<uint64_t>(load_u16(p + 3 * stride)) << 48);
  return spread4(_mm_cvtph_ps(_mm_cvtsi64_si128(static_cast<long long>(bits))));
}

// ---- group decoders: blocks 4g..4g+3 starting at p -> A, B codes and dw ----
struct DecQ8_0 {
  static constexpr int kBB = 34;
  static inline void group(const uint8_t* p, __m512i* A, __m512i* B, __m512* DW) {
    const __m512i off = _mm512_set1_epi8(static_cast<char>(0x80));
    *DW = f16x4(p, 34);
    *A = _mm512_xor_si512(load4x16(p + 2, 34), off);
    *B = _mm512_xor_si512(load4x16(p + 18, 34), off);
  }
};
struct DecQ4_0 {
  static constexpr int kBB = 18;
  static inline void group(const uint8_t* p, __m512i* A, __m512i* B, __m512* DW) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    *DW = f16x4(p, 18);
    const __m512i z = load4x16(p + 2, 18);
    *A = _mm512_and_si512(z, m4);
    *B = _mm512_and_si512(_mm512_srli_epi16(z, 4), m4);
  }
};
struct DecMXFP4 {
  static constexpr int kBB = 17;
  static inline void group(const uint8_t* p, __m512i* A, __m512i* B, __m512* DW) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i lut = _mm512_broadcast_i32x4(
        _mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0));  // 2*E2M1 + 12
    // e8m0_to_f32_half on 4 lanes: e < 2 -> 0x00200000 << e, else (e - 1) << 23
    const uint32_t e4 = p[0] | (static_cast<uint32_t>(p[17]) << 8) |
                        (static_cast<uint32_t>(p[34]) << 16) | (static_cast<uint32_t>(p[51]) << 24);
    const __m128i e = _mm_cvtepu8_epi32(_mm_cvtsi32_si128(static_cast<int>(e4)));
    const __m128i normal = _mm_slli_epi32(_mm_sub_epi32(e, _mm_set1_epi32(1)), 23);
    const __m128i sub = _mm_sllv_epi32(_mm_set1_epi32(0x00200000), e);
    const __m128i bits = _mm_blendv_epi8(normal, sub, _mm_cmplt_epi32(e, _mm_set1_epi32(2)));
    *DW = spread4(_mm_castsi128_ps(bits));
    const __m512i z = load4x16(p + 1, 17);
    *A = _mm512_shuffle_epi8(lut, _mm512_and_si512(z, m4));
    *B = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(z, 4), m4));
  }
};

template <int R, int T, bool kOffset>
inline void group_fma(__m512 (&acc)[R][T], const __m512i (&A)[R], const __m512i (&B)[R],
                      const __m512 (&DW)[R], const ActQ& a, int64_t t0, int64_t g) {
#pragma GCC unroll 4
  for (int t = 0; t < T; ++t) {
    const int8_t* xq = a.q(t0 + t) + 128 * g;
    const __m512i XA = _mm512_loadu_si512(xq);
    const __m512i XB = _mm512_loadu_si512(xq + 64);
    const __m512 DX = spread4(_mm_loadu_ps(a.d(t0 + t) + 4 * g));
    __m512 KC = _mm512_setzero_ps();
    if constexpr (kOffset) KC = spread4(_mm_loadu_ps(a.c(t0 + t) + 4 * g));
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
      const __m512i p =
          _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), A[i], XA), B[i], XB);
      const __m512 f = _mm512_cvtepi32_ps(p);
      const __m512 s = kOffset ? _mm512_fmsub_ps(f, DX, KC) : _mm512_mul_ps(f, DX);
      acc[i][t] = _mm512_fmadd_ps(s, DW[i], acc[i][t]);
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
  const int64_t ng = a.nb / 4;
  // Software prefetch of the same bytes R rows further on (the next row tile):
  // short rows read 4 at a time defeat the hardware prefetcher's ramp-up.
  const int64_t ahead = R * static_cast<int64_t>(W.row_stride);
  for (int64_t g = 0; g < ng; ++g) {
    __m512i A[R], B[R];
    __m512 DW[R];
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
      const uint8_t* p = rows[i] + g * 4 * Dec::kBB;
      for (int l = 0; l < 4 * Dec::kBB; l += 64) _mm_prefetch(reinterpret_cast<const char*>(p + ahead + l), _MM_HINT_T0);
      Dec::group(p, &A[i], &B[i], &DW[i]);
    }
    group_fma<R, T, true>(acc, A, B, DW, a, t0, g);
  }
  if (const int rem = static_cast<int>(a.nb - 4 * ng)) {
    // Tail group: copy the 1..3 remaining blocks into a zeroed 4-block buffer
    // (zero scale; the activations there are zero too).
    alignas(64) uint8_t tmp[4 * Dec::kBB];
    __m512i A[R], B[R];
    __m512 DW[R];
    for (int i = 0; i < R; ++i) {
      std::memset(tmp, 0, sizeof(tmp));
      std::memcpy(tmp, rows[i] + ng * 4 * Dec::kBB, static_cast<size_t>(rem) * Dec::kBB);
      Dec::group(tmp, &A[i], &B[i], &DW[i]);
    }
    group_fma<R, T, true>(acc, A, B, DW, a, t0, ng);
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
  // qwords of (lo, hi): A = [lo L0, hi L0, lo L2, hi L2], B = [lo L1, hi L1, lo L3, hi L3]
  const __m512i idxA = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
  const __m512i idxB = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
  const __m512i idx0 = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  const __m512i idx1 = _mm512_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7);
  const int64_t nsb = a.nb / 8;
  const int64_t ahead = R * static_cast<int64_t>(W.row_stride);  // see tile_int
  for (int64_t sb = 0; sb < nsb; ++sb) {
    __m512 DSC[R], MN[R];
    for (int i = 0; i < R; ++i) {
      const uint8_t* p = rows[i] + sb * 144;
      const __m128 dd = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(
          load_u16(p) | (static_cast<uint32_t>(load_u16(p + 2)) << 16))));
      uint64_t sc64, mn64;
      q4k_scales_mins(p + 4, &sc64, &mn64);
      const __m256 scf = _mm256_cvtepi32_ps(
          _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(sc64))));
      const __m256 mnf = _mm256_cvtepi32_ps(
          _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(mn64))));
      DSC[i] = _mm512_zextps256_ps512(_mm256_mul_ps(_mm256_broadcastss_ps(dd), scf));
      MN[i] = _mm512_zextps256_ps512(
          _mm256_mul_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dd)), mnf));
    }
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      __m512i A[R], B[R];
      __m512 DW[R];
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) {
        const uint8_t* p = rows[i] + sb * 144 + 64 * h;
        _mm_prefetch(reinterpret_cast<const char*>(p + ahead), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(p + ahead + 72), _MM_HINT_T0);
        const __m512i z = _mm512_loadu_si512(p + 16);
        const __m512i lo = _mm512_and_si512(z, m4);
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(z, 4), m4);
        A[i] = _mm512_permutex2var_epi64(lo, idxA, hi);
        B[i] = _mm512_permutex2var_epi64(lo, idxB, hi);
        DW[i] = _mm512_permutexvar_ps(h ? idx1 : idx0, DSC[i]);
      }
      group_fma<R, T, false>(acc, A, B, DW, a, t0, 2 * sb + h);
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
    case GGMLType::Q8_0: *cscale = 128.0f / 4.0f; return true;  // k = 128, 4 lanes per block
    case GGMLType::Q4_0: *cscale = 8.0f / 4.0f; return true;    // k = 8
    case GGMLType::MXFP4: *cscale = 12.0f / 4.0f; return true;  // k = 12
    case GGMLType::Q4_K: *cscale = 1.0f; return true;           // mins use dx*sum(q)
    default: return false;
  }
}

void gemm_avx512(const WeightMatrix& W, const ActQ* act, const float* X, int64_t ldx,
                 int64_t n_tokens, float* Y, int64_t ldy, int64_t r0, int64_t r1) {
  auto ints = [&](auto dec) {
    using Dec = decltype(dec);
    auto f = [&](auto R, auto T, int64_t r, int64_t t) {
      tile_int<Dec, decltype(R)::value, decltype(T)::value>(W, r, *act, t, Y, ldy);
    };
    // Decode (1..3 tokens): one row at a time, so each thread reads one
    // contiguous stream (4 interleaved short rows halve the DRAM throughput).
    if (n_tokens < 4)
      drive<1>(r0, r1, n_tokens, f);
    else
      drive<4>(r0, r1, n_tokens, f);
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
    case GGMLType::Q4_K: {
      auto f = [&](auto R, auto T, int64_t r, int64_t t) {
        tile_q4k<decltype(R)::value, decltype(T)::value>(W, r, *act, t, Y, ldy);
      };
      if (n_tokens < 4)
        drive<1>(r0, r1, n_tokens, f);
      else
        drive<4>(r0, r1, n_tokens, f);
      return;
    }
    default: return;
  }
}

}  // namespace qk
}  // namespace pyv4
