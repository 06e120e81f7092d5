// AVX2 + FMA + F16C kernels (compiled with -mavx2 -mfma -mf16c; called only
// when CPUID says so). Everything lives in an anonymous namespace so these
// inline helpers never clash (ODR) with the AVX-512 file's.
//
// Integer weight types use the activation format of quant/kernels.h:
//   per 32-block:  P = sum u_i q_i  (vpmaddubsw + vpmaddwd, exact in int32)
//                  acc += dw * (dx * P - cs)          (cs = k * dx * sum q)
// Q8_0 has signed codes, so it uses the sign trick (|w| times sign(q, w)), k = 0;
// Q4_0 codes are the nibbles (k = 8); MXFP4 codes are 2*E2M1 + 12 (k = 12);
// IQ4_NL codes are its signed levels, multiplied as Q8_0's (k = 0);
// Q4_K codes are the nibbles with dw = d*sc, and the mins are subtracted once
// per super-block: acc -= sum_i dmin*m_i * dx_i*sum(q)_i.
// No pair of u8*s8 products can saturate vpmaddubsw: |u| <= 128 (Q8_0, sign
// trick) or u <= 24, and |q| <= 127.
#include <immintrin.h>

#include <cstring>

#include "quant/blocks.h"
#include "quant/kernels.h"
#include "quant/simd_avx2.h"
#include "quant/tile_drive.h"

namespace pyv4 {
namespace qk {
namespace {

using namespace qblocks;

inline float f16(const uint8_t* p) { return _cvtsh_ss(load_u16(p)); }

// Low nibbles of 16 bytes in lanes 0..15, high nibbles in lanes 16..31.
inline __m256i nibbles16(const uint8_t* p) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m256i both = _mm256_set_m128i(_mm_srli_epi16(v, 4), v);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

// The fields F (uint8 / uint16) at p + kStride * k for k < n (n <= 8), zeros after,
// as the lanes of an xmm: built in general registers (8 narrow stores and one
// wide load would miss store forwarding); k < n keeps a row's last group in the row.
template <int64_t kStride, class F>
inline __m128i fields8(const uint8_t* p, int n) {
  constexpr int kBits = 8 * sizeof(F);
  uint64_t w[2] = {0, 0};
#pragma GCC unroll 8
  for (int k = 0; k < 8; ++k)
    if (k < n) {
      F v;
      std::memcpy(&v, p + kStride * k, sizeof(F));
      w[k * kBits / 64] |= static_cast<uint64_t>(v) << (k * kBits % 64);
    }
  return _mm_set_epi64x(static_cast<long long>(w[1]), static_cast<long long>(w[0]));
}

// ---- block decoders: scales8(row, b, n), the scales dw of blocks b..b+n-1 (n <= 8;
// the lanes after: finite, they meet zero dx and cs) as one vector; codes(row, b),
// the codes of block b ----
struct DecQ8_0 {
  static constexpr int64_t kBytes = 34;
  static constexpr bool kSigned = true;
  static constexpr bool kOffset = false;
  static inline __m256 scales8(const uint8_t* row, int64_t b, int n) {
    return _mm256_cvtph_ps(fields8<kBytes, uint16_t>(row + b * kBytes, n));
  }
  static inline __m256i codes(const uint8_t* row, int64_t b) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + b * kBytes + 2));
  }
};
struct DecQ4_0 {
  static constexpr int64_t kBytes = 18;
  static constexpr bool kSigned = false;
  static constexpr bool kOffset = true;  // k = 8
  static inline __m256 scales8(const uint8_t* row, int64_t b, int n) {
    return _mm256_cvtph_ps(fields8<kBytes, uint16_t>(row + b * kBytes, n));
  }
  static inline __m256i codes(const uint8_t* row, int64_t b) { return nibbles16(row + b * kBytes + 2); }
};
// IQ4_NL: Q4_0's blocks, the codes its signed non-linear levels (|level| <= 127,
// multiplied as Q8_0's by the sign trick).
struct DecIQ4_NL {
  static constexpr int64_t kBytes = 18;
  static constexpr bool kSigned = true;
  static constexpr bool kOffset = false;
  static inline __m256 scales8(const uint8_t* row, int64_t b, int n) { return DecQ4_0::scales8(row, b, n); }
  static inline __m256i codes(const uint8_t* row, int64_t b) {
    const __m256i lut = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4nlValues)));
    return _mm256_shuffle_epi8(lut, nibbles16(row + b * kBytes + 2));
  }
};
struct DecMXFP4 {
  static constexpr int64_t kBytes = 17;
  static constexpr bool kSigned = false;
  static constexpr bool kOffset = true;  // k = 12
  static inline __m256 scales8(const uint8_t* row, int64_t b, int n) {
    // e8m0_to_f32_half in lanes: (e - 1) << 23, or 0x00200000 << e = (e + 1) << 21 for e < 2
    const __m256i e = _mm256_cvtepu8_epi32(fields8<kBytes, uint8_t>(row + b * kBytes, n));
    const __m256i normal = _mm256_slli_epi32(_mm256_sub_epi32(e, _mm256_set1_epi32(1)), 23);
    const __m256i tiny = _mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(1)), 21);
    return _mm256_castsi256_ps(_mm256_blendv_epi8(normal, tiny, _mm256_cmpgt_epi32(_mm256_set1_epi32(2), e)));
  }
  static inline __m256i codes(const uint8_t* row, int64_t b) {
    // 2*E2M1 + 12: 0..24
    const __m256i lut = _mm256_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0,
                                         12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0);
    return _mm256_shuffle_epi8(lut, nibbles16(row + b * kBytes + 1));
  }
};

// The n (<= 8) floats at p, zeros after (a row's last group may end before the padding does).
inline __m256 load8(const float* p, int n) {
  if (n == 8) return _mm256_loadu_ps(p);
  return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}

// Groups of 8 blocks: their scales dw as one vector, dw * dx stored for the
// blocks' FMAs and dw . cs summed per lane, not a scalar dw, dw * dx and dw * cs
// per block (Zen 2, 1 / 3 tokens: MXFP4 13.6-13.7 -> 11.8-11.9 / 28.4 -> 25.6 ns per
// 256 weights, Q4_0 12.9 -> 10.5 / 29.0 -> 24.4; the MXFP4 GEMV from DRAM 0.60-0.81
// -> 0.79-0.96 of the read bandwidth in three paired runs).
template <class Dec, int R, int T>
void tile_int(const WeightMatrix& W, int64_t r, const ActQ& a, int64_t t0, float* Y, int64_t ldy) {
  constexpr int S = kSets<T>;
  __m256 acc[S][R][T];
  init_sums(acc);
  const uint8_t* rows[R];
  for (int i = 0; i < R; ++i) rows[i] = W.row(r + i);
  const int8_t* xq[T];  // held in registers: GCC recomputed a.q(t) in every block
  for (int t = 0; t < T; ++t) xq[t] = a.q(t0 + t);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 csum[R][T];  // offset types: dw * cs per lane, each taken by the 8 lanes of its block
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) csum[i][t] = _mm256_setzero_ps();
  alignas(32) float dwx[R][T][8];
  // block b0 + s into accumulator set k (constant once the loops below are unrolled,
  // so the sets stay in registers)
  auto block = [&](int64_t b0, int s, int k) {
    const int64_t b = b0 + s;
    __m256i U[R], A[R];
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
      U[i] = Dec::codes(rows[i], b);
      if constexpr (Dec::kSigned) A[i] = _mm256_sign_epi8(U[i], U[i]);
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      const __m256i X = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[t] + 32 * b));
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) {
        __m256i p16;
        if constexpr (Dec::kSigned)
          p16 = _mm256_maddubs_epi16(A[i], _mm256_sign_epi8(X, U[i]));
        else
          p16 = _mm256_maddubs_epi16(U[i], X);
        const __m256 f = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
        acc[k][i][t] = _mm256_fmadd_ps(f, _mm256_broadcast_ss(&dwx[i][t][s]), acc[k][i][t]);
      }
    }
  };
  const int64_t nb = a.nb;
  for (int64_t b0 = 0; b0 < nb; b0 += 8) {
    const int n = nb - b0 < 8 ? static_cast<int>(nb - b0) : 8;
    if constexpr (R == 1 && T < 4) prefetch_ahead<8 * Dec::kBytes>(rows[0] + b0 * Dec::kBytes);  // decode
    for (int i = 0; i < R; ++i) {
      const __m256 dw = Dec::scales8(rows[i], b0, n);
      for (int t = 0; t < T; ++t) {
        _mm256_store_ps(dwx[i][t], _mm256_mul_ps(dw, load8(a.d(t0 + t) + b0, n)));
        if constexpr (Dec::kOffset) csum[i][t] = _mm256_fmadd_ps(dw, load8(a.c(t0 + t) + b0, n), csum[i][t]);
      }
    }
    if (n == 8) {
#pragma GCC unroll 8
      for (int s = 0; s < 8; ++s) block(b0, s, s % S);
    } else {
      // a row's last blocks past a multiple of S all go to set 0: a GEMV of fewer
      // than S blocks sums as the tiles of more tokens do (batched sessions rely on it)
      const int full = n - n % S;
      for (int s = 0; s < full; s += S)
#pragma GCC unroll 4
        for (int k = 0; k < S; ++k) block(b0, s + k, k);
      for (int s = full; s < n; ++s) block(b0, s, 0);
    }
  }
  if constexpr (Dec::kOffset)
    for (int i = 0; i < R; ++i)
      for (int t = 0; t < T; ++t) acc[0][i][t] = _mm256_sub_ps(acc[0][i][t], _mm256_set1_ps(hsum(csum[i][t])));
  store_sums(acc, Y, ldy, r, t0);
}

// Q4_K: 8 sub-blocks of 32 per 144-byte super-block.
template <int R, int T>
void tile_q4k(const WeightMatrix& W, int64_t r, const ActQ& a, int64_t t0, float* Y,
              int64_t ldy) {
  // kSets sums per output: with one, the GEMV waited on the FMA latency (8 dependent
  // FMAs a super-block: Zen 2, 1 token, 14.2-14.6 -> 10.1-10.2 ns per 256 weights)
  constexpr int S = kSets<T>;
  __m256 acc[S][R][T];
  init_sums(acc);
  const uint8_t* rows[R];
  for (int i = 0; i < R; ++i) rows[i] = W.row(r + i);
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const int8_t* xq[T];  // held in registers: GCC recomputed a.q(t) in every block
  for (int t = 0; t < T; ++t) xq[t] = a.q(t0 + t);
  const int64_t nsb = a.nb / 8;
  // d * sc of the 8 sub-blocks times their dx, per token: one FMA per block below
  alignas(32) float ddx[R][T][8];
  for (int64_t sb = 0; sb < nsb; ++sb) {
    if constexpr (R == 1 && T < 4) prefetch_ahead<144>(rows[0] + sb * 144);  // decode
    __m256 MN[R];
    for (int i = 0; i < R; ++i) {
      const uint8_t* p = rows[i] + sb * 144;
      const float d = f16(p), dmin = f16(p + 2);
      uint64_t sc64, mn64;
      q4k_scales_mins(p + 4, &sc64, &mn64);
      const __m128i sc8 = _mm_cvtsi64_si128(static_cast<long long>(sc64));
      const __m128i mn8 = _mm_cvtsi64_si128(static_cast<long long>(mn64));
      const __m256 dsc = _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(sc8)));
      for (int t = 0; t < T; ++t)
        _mm256_store_ps(ddx[i][t], _mm256_mul_ps(dsc, _mm256_loadu_ps(a.d(t0 + t) + sb * 8)));
      MN[i] = _mm256_mul_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(mn8)));
    }
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      __m256i U0[R], U1[R];
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) {
        const __m256i q =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[i] + sb * 144 + 16 + 32 * c));
        U0[i] = _mm256_and_si256(q, m4);
        U1[i] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
      }
      const int64_t b = sb * 8 + 2 * c;
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) {
        const __m256i X0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[t] + 32 * b));
        const __m256i X1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[t] + 32 * b + 32));
#pragma GCC unroll 4
        for (int i = 0; i < R; ++i) {
          const __m256 f0 =
              _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(U0[i], X0), ones));
          const __m256 f1 =
              _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(U1[i], X1), ones));
          __m256& a0 = acc[(2 * c) % S][i][t];
          __m256& a1 = acc[(2 * c + 1) % S][i][t];
          a0 = _mm256_fmadd_ps(f0, _mm256_broadcast_ss(&ddx[i][t][2 * c]), a0);
          a1 = _mm256_fmadd_ps(f1, _mm256_broadcast_ss(&ddx[i][t][2 * c + 1]), a1);
        }
      }
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      const __m256 C = _mm256_loadu_ps(a.c(t0 + t) + sb * 8);
      for (int i = 0; i < R; ++i) acc[S - 1][i][t] = _mm256_fnmadd_ps(MN[i], C, acc[S - 1][i][t]);
    }
  }
  store_sums(acc, Y, ldy, r, t0);
}

template <class Dec>
void run_int(const WeightMatrix& W, const ActQ& a, int64_t n_tokens, float* Y, int64_t ldy,
             int64_t r0, int64_t r1) {
  auto f = [&](auto R, auto T, int64_t r, int64_t t) {
    tile_int<Dec, decltype(R)::value, decltype(T)::value>(W, r, a, t, Y, ldy);
  };
  drive_rows<2>(r0, r1, n_tokens, f);
}

}  // namespace

bool act_cscale_avx2(GGMLType t, float* cscale) {
  switch (t) {
    case GGMLType::Q8_0:
    case GGMLType::IQ4_NL: *cscale = 0.0f; return true;        // sign trick, no offset
    case GGMLType::Q4_0: *cscale = 8.0f / 8.0f; return true;   // k = 8, 8 lanes per block
    case GGMLType::MXFP4: *cscale = 12.0f / 8.0f; return true; // k = 12
    case GGMLType::Q4_K: *cscale = 1.0f; return true;          // mins use dx*sum(q)
    default: return false;
  }
}

void quantize_act_avx2(const float* X, int64_t ldx, int64_t n_tokens, int64_t cols, float cscale,
                       ActLayout layout, int8_t* qs, float* dx, float* cs, float* dxr,
                       float* csr) {
  const int64_t nb = cols / 32, nb_pad = act_nb_pad(nb, layout);
  const bool quad = layout == ActLayout::Quad, lane = layout == ActLayout::Lane;
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float* x = X + t * ldx;
    int8_t* q = qs + t * nb_pad * 32;
    float* d = dx + t * nb_pad;
    float* c = cs + t * nb_pad;
    for (int64_t b = 0; b < nb; ++b) {
      __m256 v[4];
      __m256 amax = _mm256_setzero_ps();
      for (int j = 0; j < 4; ++j) {
        v[j] = _mm256_loadu_ps(x + 32 * b + 8 * j);
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[j]));
      }
      __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
      m = _mm_max_ps(m, _mm_movehl_ps(m, m));
      m = _mm_max_ss(m, _mm_movehdup_ps(m));
      const float am = _mm_cvtss_f32(m);
      const float db = am / 127.0f, id = am > 0.0f ? 127.0f / am : 0.0f;
      const __m256 vid = _mm256_set1_ps(id);
      __m256i i32[4];
      for (int j = 0; j < 4; ++j) i32[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], vid));
      // sum of the 32 integers
      __m256i s = _mm256_add_epi32(_mm256_add_epi32(i32[0], i32[1]), _mm256_add_epi32(i32[2], i32[3]));
      __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
      const int sum = _mm_cvtsi128_si32(s4);
      // pack to int8 in element order
      const __m256i p01 = _mm256_packs_epi32(i32[0], i32[1]);
      const __m256i p23 = _mm256_packs_epi32(i32[2], i32[3]);
      __m256i p = _mm256_packs_epi16(p01, p23);
      p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
      if (quad) {
        int8_t* g = q + 128 * (b / 4) + 16 * (b % 4);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(g), _mm256_castsi256_si128(p));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(g + 64), _mm256_extracti128_si256(p, 1));
      } else if (lane) {
        int8_t* g = q + 512 * (b / 16) + 4 * (b % 16);
        alignas(32) int32_t w[8];
        _mm256_store_si256(reinterpret_cast<__m256i*>(w), p);
        for (int k = 0; k < 8; ++k) std::memcpy(g + 64 * k, &w[k], 4);
      } else {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + 32 * b), p);
      }
      d[b] = db;
      c[b] = cscale * (db * static_cast<float>(sum));
    }
    if (quad) {
      const int64_t nbr = (nb + 15) & ~int64_t(15);
      float* dr = dxr + t * nbr;
      float* cr = csr + t * nbr;
      for (int64_t s = 0; s < nbr; s += 16)
        for (int l = 0; l < 4; ++l)
          for (int g = 0; g < 4; ++g) {
            const int64_t b = s + 4 * g + l;
            dr[s + 4 * l + g] = b < nb ? d[b] : 0.0f;
            cr[s + 4 * l + g] = b < nb ? 4.0f * c[b] : 0.0f;  // one lane per block
          }
    }
    for (int64_t b = nb; b < nb_pad; ++b) {
      if (quad) {
        int8_t* g = q + 128 * (b / 4) + 16 * (b % 4);
        std::memset(g, 0, 16);
        std::memset(g + 64, 0, 16);
      } else if (lane) {
        int8_t* g = q + 512 * (b / 16) + 4 * (b % 16);
        for (int k = 0; k < 8; ++k) std::memset(g + 64 * k, 0, 4);
      } else {
        std::memset(q + 32 * b, 0, 32);
      }
      d[b] = c[b] = 0.0f;
    }
  }
}

void gemm_avx2(const WeightMatrix& W, const ActQ* act, const float* X, int64_t ldx,
               int64_t n_tokens, float* Y, int64_t ldy, int64_t r0, int64_t r1) {
  switch (W.type) {
    case GGMLType::F32:
    case GGMLType::F16:
    case GGMLType::BF16: gemm_float_avx2(W, X, ldx, n_tokens, Y, ldy, r0, r1); return;
    case GGMLType::Q8_0: run_int<DecQ8_0>(W, *act, n_tokens, Y, ldy, r0, r1); return;
    case GGMLType::Q4_0: run_int<DecQ4_0>(W, *act, n_tokens, Y, ldy, r0, r1); return;
    case GGMLType::IQ4_NL: run_int<DecIQ4_NL>(W, *act, n_tokens, Y, ldy, r0, r1); return;
    case GGMLType::MXFP4: run_int<DecMXFP4>(W, *act, n_tokens, Y, ldy, r0, r1); return;
    case GGMLType::Q4_K: {
      auto f = [&](auto R, auto T, int64_t r, int64_t t) {
        tile_q4k<decltype(R)::value, decltype(T)::value>(W, r, *act, t, Y, ldy);
      };
      drive_rows<2>(r0, r1, n_tokens, f);
      return;
    }
    default: return;
  }
}

uint64_t read_sum_avx2(const uint8_t* p, size_t bytes) {
  __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
  size_t i = 0;
  for (; i + 128 <= bytes; i += 128) {
    s0 = _mm256_add_epi64(s0, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i)));
    s1 = _mm256_add_epi64(s1, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 32)));
    s2 = _mm256_add_epi64(s2, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 64)));
    s3 = _mm256_add_epi64(s3, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 96)));
  }
  s0 = _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3));
  alignas(32) uint64_t v[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(v), s0);
  uint64_t s = v[0] + v[1] + v[2] + v[3];
  for (; i < bytes; ++i) s += p[i];
  return s;
}

}  // namespace qk
}  // namespace pyv4
