// AVX2 + FMA + F16C kernels of the super-block weight types Q2_K, Q3_K, IQ2_XXS,
// IQ4_XS, the i-quants IQ3_XXS, IQ2_XS, IQ1_S, IQ1_M, IQ3_S, IQ2_S and Q5_K, Q6_K
// (math in quant/kernels.h), on activations in the plain layout. Per 32-element
// block b and (row, token):
//   Q2_K / Q3_K / IQ2_XS / IQ1_M / IQ2_S / Q5_K / Q6_K (16-element sub-block scales a_s):
//                 P = vpmaddwd(vpmaddubsw(c, q), 256 a)   8 int32 lanes, the two
//                 sub-blocks' scales a_s in the low / high 128-bit halves
//                 acc += (d / 256 * dx_b) * P;  per super-block acc += -d2*m_s * hs_s
//   IQ2_XXS / IQ3_XXS / IQ1_S / IQ3_S (codes u with an offset k = 43 / 64 / 9 / 16):
//                 P = vpmaddwd(vpmaddubsw(u, q), 1)
//                 acc += (dw * dx_b) * P;  per super-block acc -= 8 dw . cs
//                 (cs = k/8 * dx * sum q)
//   IQ4_XS:       P = vpmaddwd(vpmaddubsw(|v|, sign(q, v)), 1), v the signed level
//                 acc += dw * dx_b * P                (|v| <= 127: no saturation)
// vpmaddubsw cannot saturate: codes <= 126 (IQ3_XXS's), |q| <= 127, so a pair
// is at most 2 * 126 * 127 = 32004.
// 1..3 tokens: one row at a time (each thread streams its rows); more: tiles of
// 2 rows x up to 4 tokens, each block decoded once per tile. The table-loading
// decoders (the offset types, IQ2_XS, IQ2_S) decode block b + 1 before block b's
// products, so the table loads of the next block issue ahead of this block's
// multiplies: Zen 1, 1 thread, 1 / 3 tokens: IQ2_XXS 44.2 / 86.5 -> 41.1 / 80.3 ns
// per 256 weights, IQ2_XS 48.5 / 88.6 -> 46.6 / 82.3, IQ2_S 51.1 / 90.6 ->
// 47.7 / 84.1, IQ3_XXS 56.4 / 95.0 -> 52.6 / 89.1. The K types gained nothing and
// IQ1_M (codes built in general registers) lost 18 %: they decode in order.
// Small tiles spread their sums over kSets accumulator sets: one dependent FMA
// chain per output would bound a GEMV by the FMA latency (4 cycles per block).
#include <immintrin.h>

#include "quant/blocks.h"
#include "quant/kernels.h"
#include "quant/lowbit_decode_avx2.h"
#include "quant/simd_avx2.h"
#include "quant/tile_drive.h"

namespace pyv4 {
namespace qk {
namespace {

using namespace qblocks;

// The vpshufb controls that make block b's vpmaddwd multiplier out of KScales::a8:
// byte 2b into the high byte of the low lane's words, 2b + 1 into the high lane's.
struct ScaleSplit {
  alignas(32) uint8_t c[8][32];
};
constexpr ScaleSplit make_scale_split() {
  ScaleSplit p{};
  for (int b = 0; b < 8; ++b)
    for (int e = 0; e < 32; ++e) p.c[b][e] = e % 2 ? static_cast<uint8_t>(2 * b + (e >= 16)) : 0x80;
  return p;
}
inline constexpr ScaleSplit kScaleSplit = make_scale_split();

template <class Dec, int R, int T>
void tile_k(const WeightMatrix& W, int64_t r, const ActQ& a, int64_t t0, float* Y, int64_t ldy) {
  constexpr int S = kSets<T>;
  __m256 acc[S][R][T];
  init_sums(acc);
  const uint8_t* rows[R];
  for (int i = 0; i < R; ++i) rows[i] = W.row(r + i);
  const int8_t* xq[T];  // held in registers: GCC recomputed a.q(t) in every block
  for (int t = 0; t < T; ++t) xq[t] = a.q(t0 + t);
  KScales ks[R];
  const int64_t nsb = a.nb / 8;
  alignas(32) float ddx[R][T][8];  // d / 256 * dx of the super-block's 8 blocks (as tile_offset's dxw)
  for (int64_t sb = 0; sb < nsb; ++sb) {
    for (int i = 0; i < R; ++i) {
      Dec::scales(rows[i] + sb * Dec::kBytes, &ks[i]);
      const __m256 d = _mm256_set1_ps(ks[i].d * (1.0f / 256));  // the multipliers are a_s * 256
      for (int t = 0; t < T; ++t)
        _mm256_store_ps(ddx[i][t], _mm256_mul_ps(d, _mm256_loadu_ps(a.d(t0 + t) + 8 * sb)));
    }
    __m256i Un[R];
    if constexpr (Dec::kDecodeAhead)
      for (int i = 0; i < R; ++i) Un[i] = Dec::codes(rows[i] + sb * Dec::kBytes, 0);
#pragma GCC unroll 8
    for (int b = 0; b < 8; ++b) {
      __m256i U[R], A[R];
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) {
        if constexpr (Dec::kDecodeAhead) {
          U[i] = Un[i];
          if (b < 7) Un[i] = Dec::codes(rows[i] + sb * Dec::kBytes, b + 1);
        } else {
          U[i] = Dec::codes(rows[i] + sb * Dec::kBytes, b);
        }
        A[i] = _mm256_shuffle_epi8(ks[i].a8, load256(kScaleSplit.c[b]));
      }
      const int64_t blk = 8 * sb + b;
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) {
        const __m256i X = load256(reinterpret_cast<const uint8_t*>(xq[t] + 32 * blk));
#pragma GCC unroll 4
        for (int i = 0; i < R; ++i) {
          const __m256 f =
              _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(U[i], X), A[i]));
          acc[b % S][i][t] = _mm256_fmadd_ps(f, _mm256_broadcast_ss(&ddx[i][t][b]), acc[b % S][i][t]);
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


// The types whose codes carry an offset k that cs removes (IQ2_XXS, IQ3_XXS,
// IQ1_S, IQ3_S): an Off decoder per row takes each super-block (begin: its 8
// block scales, vectorised, and what its blocks share) and decodes its 32-block
// b (codes, always inlined: GCC left the calls in the unrolled loop, which cost
// IQ1_S ~1.7x).
// dw * (dx * P - cs) splits into dw dx * P per block and - dw . cs per
// super-block: both products of 8 blocks at once (dw dx into dxw, read back
// per block), so a block costs one FMA and one broadcast per (row, token), not
// an FMA, an FMSUB and three broadcasts (a Zen 1's 128-bit units run each ymm
// float op as two).
template <class Off, int R, int T>
void tile_offset(const WeightMatrix& W, int64_t r, const ActQ& a, int64_t t0, float* Y, int64_t ldy) {
  constexpr int S = kSets<T>;
  __m256 acc[S][R][T];
  init_sums(acc);
  const uint8_t* rows[R];
  for (int i = 0; i < R; ++i) rows[i] = W.row(r + i);
  const int8_t* xq[T];  // held in registers: GCC recomputed a.q(t) in every block
  for (int t = 0; t < T; ++t) xq[t] = a.q(t0 + t);
  const __m256i ones = _mm256_set1_epi16(1);
  alignas(32) float dw[R][8];
  alignas(32) float dxw[R][T][8];
  Off dec[R];
  for (int64_t sb = 0; sb < a.nb / 8; ++sb) {
    for (int i = 0; i < R; ++i) {
      dec[i].begin(rows[i] + sb * Off::kBytes, dw[i]);
      const __m256 DW = _mm256_load_ps(dw[i]), DW8 = _mm256_mul_ps(DW, _mm256_set1_ps(8.0f));
      for (int t = 0; t < T; ++t) {
        _mm256_store_ps(dxw[i][t], _mm256_mul_ps(DW, _mm256_loadu_ps(a.d(t0 + t) + 8 * sb)));
        // cs is per lane (k / 8 * dx * sum q): 8 lanes of a block each took it
        acc[S - 1][i][t] = _mm256_fnmadd_ps(DW8, _mm256_loadu_ps(a.c(t0 + t) + 8 * sb), acc[S - 1][i][t]);
      }
    }
    __m256i Un[R];
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) Un[i] = dec[i].codes(0);
#pragma GCC unroll 8
    for (int b = 0; b < 8; ++b) {
      const int64_t blk = 8 * sb + b;
      __m256i U[R];
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) {
        U[i] = Un[i];
        if (b < 7) Un[i] = dec[i].codes(b + 1);
      }
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) {
        const __m256i X = load256(reinterpret_cast<const uint8_t*>(xq[t] + 32 * blk));
#pragma GCC unroll 4
        for (int i = 0; i < R; ++i) {
          const __m256 f = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(U[i], X), ones));
          acc[b % S][i][t] = _mm256_fmadd_ps(f, _mm256_broadcast_ss(&dxw[i][t][b]), acc[b % S][i][t]);
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
  constexpr int S = kSets<T>;
  __m256 acc[S][R][T];
  init_sums(acc);
  const uint8_t* rows[R];
  for (int i = 0; i < R; ++i) rows[i] = W.row(r + i);
  const int8_t* xq[T];  // held in registers: GCC recomputed a.q(t) in every block
  for (int t = 0; t < T; ++t) xq[t] = a.q(t0 + t);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t sb = 0; sb < a.nb / 8; ++sb)
#pragma GCC unroll 8
  for (int b = 0; b < 8; ++b) {
    const int64_t blk = 8 * sb + b;
    __m256i V[R], M[R];
    float dw[R];
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
      V[i] = iq4xs_levels(rows[i] + sb * sizeof(BlockIQ4_XS), b, &dw[i]);
      M[i] = _mm256_sign_epi8(V[i], V[i]);  // |level|
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      const __m256i X = load256(reinterpret_cast<const uint8_t*>(xq[t] + 32 * blk));
      const float dx = a.d(t0 + t)[blk];
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) {
        const __m256i p16 = _mm256_maddubs_epi16(M[i], _mm256_sign_epi8(X, V[i]));
        const __m256 f = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
        // dw * dx as one scalar product: one ymm FMA per block
        acc[b % S][i][t] = _mm256_fmadd_ps(f, _mm256_set1_ps(dw[i] * dx), acc[b % S][i][t]);
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
    switch (W.type) {
      case GGMLType::Q2_K: return tile_k<DecQ2_K, kR, kT>(W, r, act, t, Y, ldy);
      case GGMLType::Q3_K: return tile_k<DecQ3_K, kR, kT>(W, r, act, t, Y, ldy);
      case GGMLType::Q5_K: return tile_k<DecQ5_K, kR, kT>(W, r, act, t, Y, ldy);
      case GGMLType::Q6_K: return tile_k<DecQ6_K, kR, kT>(W, r, act, t, Y, ldy);
      case GGMLType::IQ2_XS: return tile_k<DecIQ2_XS, kR, kT>(W, r, act, t, Y, ldy);
      case GGMLType::IQ1_M: return tile_k<DecIQ1_M, kR, kT>(W, r, act, t, Y, ldy);
      case GGMLType::IQ2_XXS: return tile_offset<OffIQ2_XXS, kR, kT>(W, r, act, t, Y, ldy);
      case GGMLType::IQ3_XXS: return tile_offset<OffIQ3_XXS, kR, kT>(W, r, act, t, Y, ldy);
      case GGMLType::IQ1_S: return tile_offset<OffIQ1_S, kR, kT>(W, r, act, t, Y, ldy);
      case GGMLType::IQ3_S: return tile_offset<OffIQ3_S, kR, kT>(W, r, act, t, Y, ldy);
      case GGMLType::IQ2_S: return tile_k<DecIQ2_S, kR, kT>(W, r, act, t, Y, ldy);
      default: return tile_iq4xs<kR, kT>(W, r, act, t, Y, ldy);
    }
  });
}

}  // namespace qk
}  // namespace pyv4
