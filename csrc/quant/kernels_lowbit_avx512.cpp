// AVX-512 (F/BW/VL/DQ) + VNNI GEMVs of the super-block weight types
// Q3_K, IQ2_XXS, IQ4_XS, Q5_K, Q6_K and of the i-quants IQ3_XXS, IQ2_XS, IQ3_S,
// IQ2_S (math in quant/kernels.h), on activations in the quad
// layout: a quad group is half a super-block (blocks 4g..4g+3), and the codes
// are built in the same order, A = elements 0..15 of each block (one 128-bit
// lane per block), B = elements 16..31. In Q3_K's bit packing the 16 codes of
// a lane come from 16 consecutive bytes, so a group is two broadcast loads and
// a per-lane shift; the i-quants gather their grid entries in that order.
//   Q3_K / IQ2_XS / IQ2_S / Q6_K (the K form, scales per 16-element sub-block):
//                P = vpdpwssd(vpdpwssd(0, vpmaddubsw(A, xa), a_A), vpmaddubsw(B, xb), a_B)
//                (A's words all belong to sub-block 2b, B's to 2b + 1, so the
//                scale vectors are word permutes of the 16 scales); 4 int32
//                lanes per block; acc += d * dx * P, per super-block += -d2*m * hs
//   Q5_K (a scale per 32-block): P = vpdpbusd(vpdpbusd(0, A, xa), B, xb),
//                acc += d sc * dx * P, per super-block += -dmin*m * hs (m of both halves)
//   IQ2_XXS / IQ3_XXS / IQ3_S (offset form): P = vpdpbusd(vpdpbusd(0, uA, xa), uB, xb),
//                u = code with offset k (the signs applied with a byte mask from
//                the sign bits); acc += dw * (dx * P - cs)   (cs = k/4 * dx * sum q per lane)
//   IQ4_XS:      the 64 code bytes of blocks 4n..4n+3 are one load (low nibbles
//                = A, high = B); u = level + 128 by vpshufb; as IQ2_XXS with
//                cs = 128/4 * dx * sum q
// These are the 1..3-token GEMVs (one row at a time) of Q3_K, IQ4_XS, Q5_K,
// Q6_K, and of IQ2_XXS / IQ2_XS / IQ2_S / IQ3_XXS / IQ3_S where the CPU lacks
// VBMI (+ GFNI / BITALG); Q2_K, IQ1_S / IQ1_M and, with those features, IQ2_XXS,
// IQ2_XS / IQ2_S and IQ3_XXS / IQ3_S have their own (gemv_q2k_avx512.cpp,
// gemv_iq1_avx512.cpp, gemv_iq2xxs_avx512.cpp, gemv_iq2s_avx512.cpp,
// gemv_iq3_avx512.cpp), and
// from 4 tokens every super-block type runs the lane GEMM (gemm_lane_avx512.cpp).
// A one-output tile alternates two accumulators (one FMA chain would bound the
// GEMV by its latency).
#include <immintrin.h>

#include <cstring>
#include <type_traits>

#include "quant/blocks.h"
#include "quant/iq2s_grid.h"
#include "quant/iq2xs_grid.h"
#include "quant/iq2xxs_grid.h"
#include "quant/iq3s_grid.h"
#include "quant/iq3xxs_grid.h"
#include "quant/kernels.h"
#include "quant/simd_avx512.h"
#include "quant/tile_drive.h"

namespace pyv4 {
namespace qk {
namespace {

using namespace qblocks;

// 16 bytes at p in all four 128-bit lanes.
inline __m512i bcast16(const uint8_t* p) {
  return _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// base + step * j in every 16-bit word of 128-bit lane j.
inline __m512i lane_counts(int base, int step) {
  const __m512i lane = _mm512_setr_epi32(0, 0, 0, 0, 0x10001, 0x10001, 0x10001, 0x10001, 0x20002,
                                         0x20002, 0x20002, 0x20002, 0x30003, 0x30003, 0x30003,
                                         0x30003);
  return _mm512_add_epi16(_mm512_set1_epi16(static_cast<int16_t>(base)),
                          _mm512_mullo_epi16(_mm512_set1_epi16(static_cast<int16_t>(step)), lane));
}

// One row's scales of a Q3_K super-block: the 16 sub-block scales a_s
// (int16 words 0..15), the offset term -4 d a_s of each sub-block, and d.
struct KScales {
  __m512i a;
  alignas(64) float mneg[16];
  float d;
  alignas(16) float dw[8];  // Q5_K: d * scale of each 32-block (its P needs no 16-bit scales)
};

struct DecQ3_K {
  static constexpr size_t kBytes = sizeof(BlockQ3_K);
  static inline void scales(const uint8_t* p, KScales* k) {
    const BlockQ3_K* blk = reinterpret_cast<const BlockQ3_K*>(p);
    uint64_t lo, hi;
    q3k_scales(blk->scales, &lo, &hi);
    const __m128i s = _mm_set_epi64x(static_cast<long long>(hi), static_cast<long long>(lo));
    const __m256i a = _mm256_sub_epi16(_mm256_cvtepu8_epi16(s), _mm256_set1_epi16(32));
    k->a = _mm512_castsi256_si512(a);
    k->d = _cvtsh_ss(blk->d);
    _mm512_store_ps(k->mneg, _mm512_mul_ps(_mm512_set1_ps(-4.0f * k->d),
                                           _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(a))));
  }
  static inline void codes(const uint8_t* p, int n, __m512i* A, __m512i* B) {
    const BlockQ3_K* blk = reinterpret_cast<const BlockQ3_K*>(p);
    const __m512i sh = lane_counts(0, 2), shh = lane_counts(4 * n, 1);
    const __m512i m3 = _mm512_set1_epi8(3), one = _mm512_set1_epi8(1);
    for (int h = 0; h < 2; ++h) {
      const __m512i lo = _mm512_and_si512(_mm512_srlv_epi16(bcast16(blk->qs + 32 * n + 16 * h), sh), m3);
      const __m512i hb = _mm512_and_si512(_mm512_srlv_epi16(bcast16(blk->hmask + 16 * h), shh), one);
      (h ? *B : *A) = _mm512_or_si512(lo, _mm512_slli_epi16(hb, 2));
    }
  }
};

// A quad group's 16 grid entries gathered (gather16, quant/simd_avx512.h) in A / B
// order: dwords 0..7 of the index vector are the entries of A (qword 2j + l: block
// j's entry l, elements 8l..8l+7 of its first 16), dwords 8..15 those of B.
// Entry e = 4j + l (block j, l = 0..3) of 16 in entry order -> A / B order.
inline __m512i to_ab(__m512i v) {
  return _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15), v);
}
// The K form's scales a_s (int16, 16 words) into k, with -c * d * a_s as mneg.
inline void k_scales(__m256i a, float d, float c, KScales* k) {
  k->d = d;
  k->a = _mm512_castsi256_si512(a);
  _mm512_store_ps(k->mneg, _mm512_mul_ps(_mm512_set1_ps(-c * d), _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(a))));
}
// The sign masks (byte j of qword e: 0xFF where element j of entry e is negative)
// of 16 entries' 7-bit sign indices v (dwords, the 8th sign their parity): the
// 8 sign bits of each entry as bytes, then as the bits of two 64-bit masks.
inline void entry_sign_masks(__m512i v, __mmask64* ka, __mmask64* kb) {
  const __m128i bytes = _mm512_cvtepi32_epi8(with_parity(v));
  *ka = _cvtu64_mask64(static_cast<uint64_t>(_mm_cvtsi128_si64(bytes)));
  *kb = _cvtu64_mask64(static_cast<uint64_t>(_mm_extract_epi64(bytes, 1)));
}

// The K scales of IQ2_XS / IQ2_S: a_s = 2 * nibble + 1 of the 8 scale bytes (byte
// b's low nibble is sub-block 2b, its high nibble 2b + 1), d = d16 / 8, c = 43.
template <class Blk>
struct Iq2NibbleScales {
  static constexpr size_t kBytes = sizeof(Blk);
  static inline void scales(const uint8_t* p, KScales* k) {
    const Blk* blk = reinterpret_cast<const Blk*>(p);
    const __m128i w = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk->scales)));
    const __m128i lo = _mm_and_si128(w, _mm_set1_epi16(15)), hi = _mm_srli_epi16(w, 4);
    const __m256i nib = _mm256_set_m128i(_mm_unpackhi_epi16(lo, hi), _mm_unpacklo_epi16(lo, hi));
    k_scales(_mm256_add_epi16(_mm256_slli_epi16(nib, 1), _mm256_set1_epi16(1)), _cvtsh_ss(blk->d) * 0.125f, 43.0f, k);
  }
};

// IQ3_S / IQ2_S: the 16 sign bytes of a quad group (4 per block: bytes 4j..4j+3 hold
// the 32 element signs of block j, bit i of a byte element 8 (byte % 4) + i) as the
// masks of the A bytes (elements 0..15 of each block: its bytes 0, 1) and the B ones.
inline void bit_sign_masks(const uint8_t* s16, __mmask64* ka, __mmask64* kb) {
  const __m128i ab = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s16)),
                                      _mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15));
  *ka = _cvtu64_mask64(static_cast<uint64_t>(_mm_cvtsi128_si64(ab)));
  *kb = _cvtu64_mask64(static_cast<uint64_t>(_mm_extract_epi64(ab, 1)));
}

// IQ2_XS as a K type (quant/kernels.h): a_s = 2 * nibble + 1, codes u = signed grid + 43.
struct DecIQ2_XS : Iq2NibbleScales<BlockIQ2_XS> {
  static inline void codes(const uint8_t* p, int n, __m512i* A, __m512i* B) {
    const BlockIQ2_XS* blk = reinterpret_cast<const BlockIQ2_XS*>(p);
    const __m512i w = to_ab(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk->qs + 32 * n))));
    __m512i gA, gB;
    gather16(kIq2xsGrid, _mm512_and_si512(w, _mm512_set1_epi32(511)), &gA, &gB);
    __mmask64 ka, kb;
    entry_sign_masks(_mm512_srli_epi32(w, 9), &ka, &kb);
    *A = iq_signed(gA, ka, 43);
    *B = iq_signed(gB, kb, 43);
  }
};

// IQ2_S as IQ2_XS: entry e = 4j + l of quad group n (block j's index l, elements
// 8l..8l+7) has the grid index qs[16n + e] | (bits 2e, 2e + 1 of the group's 4 qh
// bytes) << 8 and the sign byte qs[32 + 16n + e].
struct DecIQ2_S : Iq2NibbleScales<BlockIQ2_S> {
  static inline void codes(const uint8_t* p, int n, __m512i* A, __m512i* B) {
    const BlockIQ2_S* blk = reinterpret_cast<const BlockIQ2_S*>(p);
    uint32_t h;
    std::memcpy(&h, blk->qh + 4 * n, 4);
    const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk->qs + 16 * n)));
    const __m512i hi = _mm512_and_si512(
        _mm512_srlv_epi32(_mm512_set1_epi32(static_cast<int>(h)),
                          _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)),
        _mm512_set1_epi32(3));
    __m512i gA, gB;
    gather16(kIq2sGrid, to_ab(_mm512_or_si512(q, _mm512_slli_epi32(hi, 8))), &gA, &gB);
    __mmask64 ka, kb;
    bit_sign_masks(blk->qs + 32 + 16 * n, &ka, &kb);
    *A = iq_signed(gA, ka, 43);
    *B = iq_signed(gB, kb, 43);
  }
};

// Q5_K / Q6_K codes of 64 bytes in natural order: the low 4 bits from the
// nibbles nib (bits 0..3 of each byte; its bits 4..7 are ignored), the high bits
// from hb (already at bit 4 and up; `keep` masks the code's bits), one vpternlog
// (bits 0..3 of nib, 4..7 of hb) and one and.
inline __m512i merge_codes(__m512i nib, __m512i hb, char keep) {
  return _mm512_and_si512(_mm512_ternarylogic_epi32(nib, hb, _mm512_set1_epi8(15), 0xE4), _mm512_set1_epi8(keep));
}
// 16-bit shift counts: lo in the low 256 bits, hi in the high ones.
inline __m512i half_counts(int lo, int hi) {
  return _mm512_inserti64x4(_mm512_set1_epi16(static_cast<int16_t>(lo)),
                            _mm256_set1_epi16(static_cast<int16_t>(hi)), 1);
}
// 32 bytes at p in both 256-bit halves.
inline __m512i bcast32(const uint8_t* p) {
  return _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// Q5_K as a K type with one scale per 32-block (dw, applied as a float to the
// block's exact dot, as the offset types do) and its min for both halves
// through hs (quad group n: blocks 4n + j, j = 0..3, the nibble j % 2 of qs
// chunk 2n + j / 2, the fifth bit 4n + j of qh).
struct DecQ5_K {
  static constexpr size_t kBytes = sizeof(BlockQ5_K);
  static inline void scales(const uint8_t* p, KScales* k) {
    const BlockQ5_K* blk = reinterpret_cast<const BlockQ5_K*>(p);
    uint64_t sc, mn;
    q4k_scales_mins(blk->scales, &sc, &mn);
    auto twice = [](uint64_t v) {  // byte j -> bytes 2j, 2j + 1
      const __m128i x = _mm_cvtsi64_si128(static_cast<long long>(v));
      return _mm_unpacklo_epi8(x, x);
    };
    k->d = _cvtsh_ss(blk->d);
    _mm256_store_ps(k->dw, _mm256_mul_ps(_mm256_set1_ps(k->d), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(
                                                                  _mm_cvtsi64_si128(static_cast<long long>(sc))))));
    _mm512_store_ps(k->mneg, _mm512_mul_ps(_mm512_set1_ps(-_cvtsh_ss(blk->dmin)),
                                           _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(twice(mn)))));
  }
  static inline void codes(const uint8_t* p, int n, __m512i* A, __m512i* B) {
    const BlockQ5_K* blk = reinterpret_cast<const BlockQ5_K*>(p);
    // chunks 2n, 2n + 1: blocks 4n, 4n + 2 in the low nibbles, 4n + 1, 4n + 3 in the
    // high ones; block 4n + j's fifth bit is bit 4n + j of qh, moved to bit 4
    const __m512i v = _mm512_loadu_si512(blk->qs + 64 * n);
    __m512i h = bcast32(blk->qh);
    if (n) h = _mm512_srli_epi16(h, 4);
    const __m512i lo = merge_codes(v, _mm512_sllv_epi16(h, half_counts(4, 2)), 31);
    const __m512i hi = merge_codes(_mm512_srli_epi16(v, 4), _mm512_sllv_epi16(h, half_counts(3, 1)), 31);
    // qwords (lo, hi) -> A = elements 0..15 of blocks 0..3 (lo L0, hi L0, lo L2, hi L2), B = 16..31
    *A = _mm512_permutex2var_epi64(lo, _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13), hi);
    *B = _mm512_permutex2var_epi64(lo, _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15), hi);
  }
};

// Q6_K as a K type: a_s = int8 scale, c = 6-bit code, d2 = 32d (quad group n:
// blocks 4n + j, the nibble j / 2 of ql[64n + 32 (j % 2) ..], the bits 2j of qh[32n ..]).
struct DecQ6_K {
  static constexpr size_t kBytes = sizeof(BlockQ6_K);
  static inline void scales(const uint8_t* p, KScales* k) {
    const BlockQ6_K* blk = reinterpret_cast<const BlockQ6_K*>(p);
    k_scales(_mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk->scales))),
             _cvtsh_ss(blk->d), 32.0f, k);
  }
  static inline void codes(const uint8_t* p, int n, __m512i* A, __m512i* B) {
    const BlockQ6_K* blk = reinterpret_cast<const BlockQ6_K*>(p);
    // blocks 4n, 4n + 1 in the low nibbles of ql[64n ..], 4n + 2, 4n + 3 in the high
    // ones; block 4n + j's top 2 bits at bits 2j of qh[32n ..], moved to bits 4..5
    const __m512i v = _mm512_loadu_si512(blk->ql + 64 * n), h = bcast32(blk->qh + 32 * n);
    const __m512i c01 = merge_codes(v, _mm512_sllv_epi16(h, half_counts(4, 2)), 63);
    const __m512i c23 = merge_codes(_mm512_srli_epi16(v, 4), _mm512_srlv_epi16(h, half_counts(0, 2)), 63);
    *A = _mm512_shuffle_i64x2(c01, c23, _MM_SHUFFLE(2, 0, 2, 0));
    *B = _mm512_shuffle_i64x2(c01, c23, _MM_SHUFFLE(3, 1, 3, 1));
  }
};

template <int R, int T>
constexpr int kSets = R * T == 1 ? 2 : 1;

template <int S, int R, int T>
inline void init_sums(__m512 (&acc)[S][R][T]) {
  for (int s = 0; s < S; ++s)
    for (int i = 0; i < R; ++i)
      for (int t = 0; t < T; ++t) acc[s][i][t] = _mm512_setzero_ps();
}

template <int S, int R, int T>
inline void store_sums(__m512 (&acc)[S][R][T], float* Y, int64_t ldy, int64_t r, int64_t t0) {
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) {
      __m512 v = acc[0][i][t];
      for (int s = 1; s < S; ++s) v = _mm512_add_ps(v, acc[s][i][t]);
      Y[(t0 + t) * ldy + r + i] = _mm512_reduce_add_ps(v);
    }
}

template <class Dec, int R, int T>
void tile_k(const WeightMatrix& W, int64_t r, const ActQ& a, int64_t t0, float* Y, int64_t ldy) {
  constexpr int S = kSets<R, T>;
  constexpr bool kBlockScale = std::is_same_v<Dec, DecQ5_K>;  // P = vpdpbusd twice, dw per lane
  __m512 acc[S][R][T];
  init_sums(acc);
  const uint8_t* rows[R];
  for (int i = 0; i < R; ++i) rows[i] = W.row(r + i);
  // word w of the scale vector of A (B) in group n: scale 8n + 2(w / 8) (+ 1)
  const __m512i pa = lane_counts(0, 2), one = _mm512_set1_epi16(1), eight = _mm512_set1_epi16(8);
  const int64_t nsb = a.nb / 8;
  for (int64_t sb = 0; sb < nsb; ++sb) {
    KScales ks[R];
    for (int i = 0; i < R; ++i) Dec::scales(rows[i] + sb * Dec::kBytes, &ks[i]);
#pragma GCC unroll 2
    for (int n = 0; n < 2; ++n) {
      __m512i A[R], B[R], SA[R], SB[R];
      __m512 DW[R];
      const __m512i ia = n ? _mm512_add_epi16(pa, eight) : pa, ib = _mm512_add_epi16(ia, one);
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) {
        Dec::codes(rows[i] + sb * Dec::kBytes, n, &A[i], &B[i]);
        if constexpr (kBlockScale) {
          DW[i] = spread4(_mm_load_ps(ks[i].dw + 4 * n));
        } else {
          SA[i] = _mm512_permutexvar_epi16(ia, ks[i].a);
          SB[i] = _mm512_permutexvar_epi16(ib, ks[i].a);
          DW[i] = _mm512_set1_ps(ks[i].d);
        }
      }
      const int64_t g = 2 * sb + n;
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) {
        const int8_t* xq = a.q(t0 + t) + 128 * g;
        const __m512i xa = _mm512_loadu_si512(xq), xb = _mm512_loadu_si512(xq + 64);
        const __m512 DX = spread4(_mm_loadu_ps(a.d(t0 + t) + 4 * g));
#pragma GCC unroll 4
        for (int i = 0; i < R; ++i) {
          __m512i P;
          if constexpr (kBlockScale) {
            P = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), A[i], xa), B[i], xb);
          } else {
            P = _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_maddubs_epi16(A[i], xa), SA[i]);
            P = _mm512_dpwssd_epi32(P, _mm512_maddubs_epi16(B[i], xb), SB[i]);
          }
          acc[n % S][i][t] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(P), DX), DW[i], acc[n % S][i][t]);
        }
      }
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      const __m512 H = _mm512_loadu_ps(a.h(t0 + t) + 16 * sb);
      for (int i = 0; i < R; ++i) acc[0][i][t] = _mm512_fmadd_ps(_mm512_load_ps(ks[i].mneg), H, acc[0][i][t]);
    }
  }
  store_sums(acc, Y, ldy, r, t0);
}

// The sign masks of a quad group of IQ2_XXS / IQ3_XXS from its 4 sign words sw
// (one per block, 4 x 7-bit fields): the sign bytes (7-bit field | parity << 7,
// quant/blocks.h) of all 16 fields are built in one vector in the order of the
// A / B bytes (fields 0, 1 of each block in A, 2, 3 in B) and become two byte masks.
inline void sign_masks(__m128i sw, __mmask64* ka, __mmask64* kb) {
  // lane k: sign word of block j = (k % 8) / 2, field l = 2 * (k / 8) + k % 2
  const __m512i pick = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 0, 0, 1, 1, 2, 2, 3, 3);
  const __m512i shift = _mm512_setr_epi32(0, 7, 0, 7, 0, 7, 0, 7, 14, 21, 14, 21, 14, 21, 14, 21);
  entry_sign_masks(_mm512_and_si512(_mm512_srlv_epi32(_mm512_permutexvar_epi32(pick, _mm512_castsi128_si512(sw)), shift),
                                    _mm512_set1_epi32(127)),
                   ka, kb);
}

// d * (0.5 + (sw >> 28)) * mul of the 4 blocks, spread to their lanes.
inline __m512 iq_block_scales(uint16_t d, __m128i sw, float mul) {
  const __m128 s = _mm_cvtepi32_ps(_mm_srli_epi32(sw, 28));
  return spread4(_mm_mul_ps(_mm_mul_ps(_mm_set1_ps(_cvtsh_ss(d)), _mm_add_ps(_mm_set1_ps(0.5f), s)),
                            _mm_set1_ps(mul)));
}

// IQ2_XXS quad group n (0, 1) of the super-block at p: codes u = signed grid + 43
// in A / B, and the 4 blocks' dw spread to their lanes. The 32 bytes of the
// group are dwords (grid indices, sign word) of blocks 0..3.
inline void iq2xxs_group(const uint8_t* p, int n, __m512i* A, __m512i* B, __m512* DW) {
  const BlockIQ2_XXS* blk = reinterpret_cast<const BlockIQ2_XXS*>(p);
  const uint8_t* q = blk->qs + 32 * n;
  const __m512i Q = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)));
  const __m128i sw = _mm512_castsi512_si128(
      _mm512_permutexvar_epi32(_mm512_setr_epi32(1, 3, 5, 7, 1, 3, 5, 7, 1, 3, 5, 7, 1, 3, 5, 7), Q));
  __mmask64 ka, kb;
  sign_masks(sw, &ka, &kb);
  *DW = iq_block_scales(blk->d, sw, 0.25f);
  // qword 2j + l of A: grid entry of byte l of block j's indices; of B: byte 2 + l
  const __m128i I = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(
      _mm512_castsi512_si256(Q), _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6)));
  const __m128i ab = _mm_shuffle_epi8(I, _mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15));
  const long long* grid = reinterpret_cast<const long long*>(kIq2xxsGrid);
  const __m512i ga = _mm512_i64gather_epi64(_mm512_cvtepu8_epi64(ab), grid, 8);
  const __m512i gb = _mm512_i64gather_epi64(_mm512_cvtepu8_epi64(_mm_srli_si128(ab, 8)), grid, 8);
  *A = iq_signed(ga, ka, 43);
  *B = iq_signed(gb, kb, 43);
}

// IQ3_XXS quad group n: codes u = signed grid + 64 (each 4-byte grid entry is 4
// elements: A's lane j = block j's entries 0..3, B's entries 4..7), dw = d (0.5 + s) / 2.
inline void iq3xxs_group(const uint8_t* p, int n, __m512i* A, __m512i* B, __m512* DW) {
  const BlockIQ3_XXS* blk = reinterpret_cast<const BlockIQ3_XXS*>(p);
  const __m128i sw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk->qs + 64 + 16 * n));
  __mmask64 ka, kb;
  sign_masks(sw, &ka, &kb);
  *DW = iq_block_scales(blk->d, sw, 0.5f);
  // A's qword 2j + m: entries 4 (2j + m), + 1 of the group's 32 index bytes; B's
  // the 4 after them. Scalar loads, two entries a qword: two 16-dword gathers
  // per group measured ~1.2x slower on Zen 4.
  const uint8_t* idx = blk->qs + 32 * n;
  auto pair = [&](int e) {
    return static_cast<long long>(kIq3xxsGrid[idx[e]] | static_cast<uint64_t>(kIq3xxsGrid[idx[e + 1]]) << 32);
  };
  const __m512i ga = _mm512_setr_epi64(pair(0), pair(2), pair(8), pair(10), pair(16), pair(18), pair(24), pair(26));
  const __m512i gb = _mm512_setr_epi64(pair(4), pair(6), pair(12), pair(14), pair(20), pair(22), pair(28), pair(30));
  *A = iq_signed(ga, ka, 64);
  *B = iq_signed(gb, kb, 64);
}

// The 16-bit entries table[idx] (a 512-entry table, 64-byte aligned) of 32 word
// indices, from registers: 8 vpermt2w over its 64-entry eighths, each merged
// into the lanes whose top 3 index bits pick it (a lane keeps its index until then).
inline __m512i lookup512_epi16(const uint16_t* table, __m512i idx) {
  const __m512i top = _mm512_srli_epi16(idx, 6);
  __m512i w = idx;
#pragma GCC unroll 8
  for (int t = 0; t < 8; ++t)
    w = _mm512_mask2_permutex2var_epi16(_mm512_load_si512(table + 64 * t), w,
                                        _mm512_cmpeq_epi16_mask(top, _mm512_set1_epi16(static_cast<short>(t))),
                                        _mm512_load_si512(table + 64 * t + 32));
  return w;
}

// The 4 nibbles of each of 16 words (nibble j = bits 4j..4j+3) as the 4 bytes of
// its dword: bytes (b0, b0, b1, b1) of the word, the odd ones shifted right by 4.
inline __m512i nibbles_to_bytes(__m256i words) {
  const __m512i dup = _mm512_shuffle_epi8(
      _mm512_cvtepu16_epi32(words),
      _mm512_broadcast_i32x4(_mm_setr_epi8(0, 0, 1, 1, 4, 4, 5, 5, 8, 8, 9, 9, 12, 12, 13, 13)));
  const __m512i odd = _mm512_srli_epi16(dup, 4);
  // even bytes from dup, odd ones from odd (a bit select on 0x00FF00FF)
  return _mm512_and_si512(_mm512_ternarylogic_epi32(dup, odd, _mm512_set1_epi32(0x00FF00FF), 0xE4),
                          _mm512_set1_epi8(15));
}

// IQ3_S quad group n: codes u = signed grid + 16 (1..31), dw = d (1 + 2s). The
// group's 32 indices (block j's entry m at word 8j + m) get their 9th bit from bit
// 8j + m of its 4 qh bytes (a word mask) and go to A / B order; their entries are
// looked up as 16-bit nibble fields (kIq3sNibbles) from registers (lookup512_epi16)
// and spread to bytes (1 thread, 1 / 3 tokens: 25.9 / 32.8 ns
// per super-block; two 16-dword gathers of kIq3sGrid 34.8 / 40, IQ3_XXS's scalar
// pairs 35-36.5 / 44-46; a build without any lookup 10 / 16).
inline void iq3s_group(const uint8_t* p, int n, __m512i* A, __m512i* B, __m512* DW) {
  const BlockIQ3_S* blk = reinterpret_cast<const BlockIQ3_S*>(p);
  uint32_t h;
  std::memcpy(&h, blk->qh + 4 * n, 4);
  const __m512i q = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk->qs + 32 * n)));
  const __m512i idx = _mm512_permutexvar_epi16(
      _mm512_set_epi16(31, 30, 29, 28, 23, 22, 21, 20, 15, 14, 13, 12, 7, 6, 5, 4,  // (high word first)
                       27, 26, 25, 24, 19, 18, 17, 16, 11, 10, 9, 8, 3, 2, 1, 0),
      _mm512_mask_add_epi16(q, _cvtu32_mask32(h), q, _mm512_set1_epi16(256)));
  const __m512i w = lookup512_epi16(kIq3sNibbles, idx);
  const __m512i ga = nibbles_to_bytes(_mm512_castsi512_si256(w)), gb = nibbles_to_bytes(_mm512_extracti64x4_epi64(w, 1));
  __mmask64 ka, kb;
  bit_sign_masks(blk->signs + 16 * n, &ka, &kb);
  *A = iq_signed(ga, ka, 16);
  *B = iq_signed(gb, kb, 16);
  // blocks 4n..4n+3: the nibbles of scale bytes 2n, 2n + 1
  const __m128i s = _mm_and_si128(
      _mm_srlv_epi32(_mm_set1_epi32(load_u16(blk->scales + 2 * n)), _mm_setr_epi32(0, 4, 8, 12)), _mm_set1_epi32(15));
  const __m128 odd = _mm_cvtepi32_ps(_mm_add_epi32(_mm_slli_epi32(s, 1), _mm_set1_epi32(1)));
  *DW = spread4(_mm_mul_ps(_mm_set1_ps(_cvtsh_ss(blk->d)), odd));
}

// IQ2_XXS / IQ4_XS: Group(super-block, n, &A, &B, &DW) decodes quad group n
// into codes with an offset that cs removes.
template <int R, int T, size_t kBytes, void (*Group)(const uint8_t*, int, __m512i*, __m512i*, __m512*)>
void tile_offset(const WeightMatrix& W, int64_t r, const ActQ& a, int64_t t0, float* Y,
                 int64_t ldy) {
  constexpr int S = kSets<R, T>;
  __m512 acc[S][R][T];
  init_sums(acc);
  const uint8_t* rows[R];
  for (int i = 0; i < R; ++i) rows[i] = W.row(r + i);
  for (int64_t sb = 0; sb < a.nb / 8; ++sb)
#pragma GCC unroll 2
  for (int n = 0; n < 2; ++n) {
    const int64_t g = 2 * sb + n;
    __m512i A[R], B[R];
    __m512 DW[R];
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i)
      Group(rows[i] + sb * kBytes, n, &A[i], &B[i], &DW[i]);
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      const int8_t* xq = a.q(t0 + t) + 128 * g;
      const __m512i xa = _mm512_loadu_si512(xq), xb = _mm512_loadu_si512(xq + 64);
      const __m512 DX = spread4(_mm_loadu_ps(a.d(t0 + t) + 4 * g));
      const __m512 CS = spread4(_mm_loadu_ps(a.c(t0 + t) + 4 * g));
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) {
        const __m512i P = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), A[i], xa), B[i], xb);
        acc[n % S][i][t] =
            _mm512_fmadd_ps(DW[i], _mm512_fmsub_ps(_mm512_cvtepi32_ps(P), DX, CS), acc[n % S][i][t]);
      }
    }
  }
  store_sums(acc, Y, ldy, r, t0);
}

// IQ4_XS quad group n (0, 1) of the super-block at p: codes u = level + 128 in A / B,
// and the 4 blocks' dw spread to their lanes.
inline void iq4xs_group(const uint8_t* p, int n, __m512i* A, __m512i* B, __m512* DW) {
  const BlockIQ4_XS& blk = *reinterpret_cast<const BlockIQ4_XS*>(p);
  iq4nl_codes(_mm512_loadu_si512(blk.qs + 64 * n), A, B);
  // the 8 scales at once (quant/blocks.h iq4xs_scale): low nibble b at bit 4b of
  // scales_l, high 2 bits at bit 2b of scales_h
  uint32_t l;
  std::memcpy(&l, blk.scales_l, 4);
  const __m256i lo = _mm256_and_si256(
      _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(l)), _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)),
      _mm256_set1_epi32(15));
  const __m256i hi = _mm256_and_si256(
      _mm256_srlv_epi32(_mm256_set1_epi32(blk.scales_h), _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)),
      _mm256_set1_epi32(3));
  const __m256 ls = _mm256_cvtepi32_ps(
      _mm256_sub_epi32(_mm256_or_si256(lo, _mm256_slli_epi32(hi, 4)), _mm256_set1_epi32(32)));
  const __m128 half = n ? _mm256_extractf128_ps(ls, 1) : _mm256_castps256_ps128(ls);
  *DW = spread4(_mm_mul_ps(_mm_set1_ps(_cvtsh_ss(blk.d)), half));
}

}  // namespace

void gemm_lowbit_avx512(const WeightMatrix& W, const ActQ& act, int64_t n_tokens, float* Y,
                        int64_t ldy, int64_t r0, int64_t r1) {
  drive<1>(r0, r1, n_tokens, [&](auto R, auto T, int64_t r, int64_t t) {
    constexpr int kR = decltype(R)::value, kT = decltype(T)::value;
    switch (W.type) {
      case GGMLType::Q3_K: return tile_k<DecQ3_K, kR, kT>(W, r, act, t, Y, ldy);
      case GGMLType::Q5_K: return tile_k<DecQ5_K, kR, kT>(W, r, act, t, Y, ldy);
      case GGMLType::Q6_K: return tile_k<DecQ6_K, kR, kT>(W, r, act, t, Y, ldy);
      case GGMLType::IQ2_XS: return tile_k<DecIQ2_XS, kR, kT>(W, r, act, t, Y, ldy);
      case GGMLType::IQ2_S: return tile_k<DecIQ2_S, kR, kT>(W, r, act, t, Y, ldy);
      case GGMLType::IQ3_S:
        return tile_offset<kR, kT, sizeof(BlockIQ3_S), iq3s_group>(W, r, act, t, Y, ldy);
      case GGMLType::IQ2_XXS:
        return tile_offset<kR, kT, sizeof(BlockIQ2_XXS), iq2xxs_group>(W, r, act, t, Y, ldy);
      case GGMLType::IQ3_XXS:
        return tile_offset<kR, kT, sizeof(BlockIQ3_XXS), iq3xxs_group>(W, r, act, t, Y, ldy);
      default: return tile_offset<kR, kT, sizeof(BlockIQ4_XS), iq4xs_group>(W, r, act, t, Y, ldy);
    }
  });
}

}  // namespace qk
}  // namespace pyv4
