// Q2_K GEMV (tokens in groups of 1..3) on AVX-512 + VNNI (math in quant/kernels.h:
// sum_i w_i x_i = d * sum_s a_s dx_b(s) (sum_{i in s} c_i q_i) - dmin * sum_s m_s hs_s).
//
// The 2-bit codes of a super-block are 64 bytes, code of element 128n + 32j + l
// at bits 2j of byte 32n + l. Masked, not shifted, byte j-plane
// K_j = qs & (3 << 2j) holds 4^j * c at byte 32n + l, so vpdpbusd multiplies it
// with activations re-laid once per call to that order (no code shifts, no
// byte-pair multiply-add, no per-group scale permutes as in the quad tiles of
// kernels_lowbit_avx512.cpp). Each 128-bit lane of K_j is one sub-block
// (s = 8n + 2j + l / 16), so a 4x4 transpose-add of the 4 planes' dots leaves
// the 16 sub-blocks' exact int32 dots in one vector, in the order
// kOrder[4L + j] = sub-block of lane L of plane j; the 4^-j goes into the
// re-laid dx of each sub-block. One convert and 3 FMAs per super-block then
// apply dx, the scales a_s * d and the mins m_s * dmin against -hs in the same
// order.
#include <immintrin.h>

#include <cstring>

#include "quant/blocks.h"
#include "quant/kernels.h"
#include "quant/simd_avx512.h"  // reduce4
#include "quant/tile_drive.h"

namespace pyv4 {
namespace qk {
namespace {

using namespace qblocks;

// Sub-block of dword 4L + j of the transposed sums (lane L of plane j).
constexpr int sub_block(int i) { return 8 * ((i / 4) / 2) + 2 * (i % 4) + (i / 4) % 2; }

// Per token and super-block: the 4 planes' activations (256 bytes: plane j's
// byte 32n + l = q[128n + 32j + l]), then dx of each sub-block's block times
// 4^-j and -hs, both in kOrder (16 floats each): 384 bytes.
constexpr int64_t kSbBytes = 384;

// The index vectors of kOrder, and 4^-j for dword 4L + j (exact: powers of two).
struct LayoutConsts {
  __m512i sub, block;  // dword i <- sub_block(i), its block sub_block(i) / 2
  __m512 quarter_pow;
  LayoutConsts() {
    alignas(64) int32_t s[16], b[16];
    alignas(64) float q[16];
    for (int i = 0; i < 16; ++i) s[i] = sub_block(i), b[i] = sub_block(i) / 2, q[i] = 1.0f / (1 << (2 * (i % 4)));
    sub = _mm512_load_si512(s), block = _mm512_load_si512(b), quarter_pow = _mm512_load_ps(q);
  }
};

// The re-laid activations of every token (see kSbBytes) at xs.
inline void plane_layout(const ActQ& a, int64_t n_tokens, uint8_t* xs) {
  const int64_t nsb = a.nb / 8;
  const LayoutConsts c;
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float* dx = a.d(t);
    const float* hs = a.h(t);
    for (int64_t s = 0; s < nsb; ++s) {
      // quad groups 2s (blocks 0..3 of the super-block) and 2s + 1 (4..7): vectors
      // A (elements 0..15 of block 4n + j in lane j) and B (16..31)
      const int8_t* q = a.q(t) + 256 * s;
      const __m512i a0 = _mm512_loadu_si512(q), b0 = _mm512_loadu_si512(q + 64);
      const __m512i a1 = _mm512_loadu_si512(q + 128), b1 = _mm512_loadu_si512(q + 192);
      // plane j = lane j of a0, b0, a1, b1 (a 4x4 transpose of 128-bit lanes)
      const __m512i lo0 = _mm512_shuffle_i64x2(a0, b0, 0x44), hi0 = _mm512_shuffle_i64x2(a0, b0, 0xEE);
      const __m512i lo1 = _mm512_shuffle_i64x2(a1, b1, 0x44), hi1 = _mm512_shuffle_i64x2(a1, b1, 0xEE);
      // lo0 = a0.0 a0.1 b0.0 b0.1; want plane 0 = a0.0 b0.0 a1.0 b1.0
      uint8_t* o = xs + (t * nsb + s) * kSbBytes;
      _mm512_store_si512(o, _mm512_shuffle_i64x2(lo0, lo1, 0x88));
      _mm512_store_si512(o + 64, _mm512_shuffle_i64x2(lo0, lo1, 0xDD));
      _mm512_store_si512(o + 128, _mm512_shuffle_i64x2(hi0, hi1, 0x88));
      _mm512_store_si512(o + 192, _mm512_shuffle_i64x2(hi0, hi1, 0xDD));
      float* f = reinterpret_cast<float*>(o + 256);
      const __m512 d8 = _mm512_castps256_ps512(_mm256_loadu_ps(dx + 8 * s));
      _mm512_store_ps(f, _mm512_mul_ps(_mm512_permutexvar_ps(c.block, d8), c.quarter_pow));
      _mm512_store_ps(f + 16, _mm512_xor_ps(_mm512_set1_ps(-0.0f),  // -hs
                                            _mm512_permutexvar_ps(c.sub, _mm512_loadu_ps(hs + 16 * s))));
    }
  }
}

template <int T>
void gemv_row(const uint8_t* row, const ActQ& a, const uint8_t* xs, float* Y, int64_t ldy, int64_t r) {
  const int64_t nsb = a.nb / 8;
  // the 16 scale bytes in kOrder, zero-extended to dwords
  const __m128i order = _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
  const __m512i m3 = _mm512_set1_epi8(3), m15 = _mm512_set1_epi32(15);
  __m512 acc[T], accm[T];
#pragma GCC unroll 3
  for (int t = 0; t < T; ++t) acc[t] = accm[t] = _mm512_setzero_ps();
  for (int64_t sb = 0; sb < nsb; ++sb) {
    const BlockQ2_K* blk = reinterpret_cast<const BlockQ2_K*>(row + sb * sizeof(BlockQ2_K));
    // into L2 (T0 2 KB ahead, the previous policy, took Zen 4 from 6.6-7.4 to 5.8-6.6
    // ns per super-block, 1 thread; on the Xeon, experts_decode's Q2_K-only step, 96
    // experts from DRAM, 2 threads, median ms: 2.26-2.40 -> 2.04-2.10)
    prefetch_stream(blk, 128);
    const __m512i qv = _mm512_loadu_si512(blk->qs);
    __m512i K[4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) K[j] = _mm512_and_si512(qv, _mm512_slli_epi16(m3, 2 * j));
    const __m512i sc = _mm512_cvtepu8_epi32(
        _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk->scales)), order));
    uint32_t dd;
    std::memcpy(&dd, &blk->d, 4);  // d, dmin
    const __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(dd)));
    const __m512 A = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_and_si512(sc, m15)),
                                   _mm512_broadcastss_ps(dm));
    const __m512 M = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(sc, 4)),
                                   _mm512_broadcastss_ps(_mm_movehdup_ps(dm)));
#pragma GCC unroll 3
    for (int t = 0; t < T; ++t) {
      const uint8_t* x = xs + (t * nsb + sb) * kSbBytes;
      __m512i P[4];
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j)
        P[j] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), K[j], _mm512_load_si512(x + 64 * j));
      const __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(reduce4(P[0], P[1], P[2], P[3])),
                                     _mm512_load_ps(reinterpret_cast<const float*>(x + 256)));
      acc[t] = _mm512_fmadd_ps(f, A, acc[t]);
      accm[t] = _mm512_fmadd_ps(M, _mm512_load_ps(reinterpret_cast<const float*>(x + 320)), accm[t]);
    }
  }
#pragma GCC unroll 3
  for (int t = 0; t < T; ++t) Y[t * ldy + r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[t], accm[t]));
}

}  // namespace

void gemv_q2k_avx512(const WeightMatrix& W, const ActQ& act, int64_t n_tokens, float* Y,
                     int64_t ldy, int64_t r0, int64_t r1) {
  uint8_t* xs = scratch_bytes(static_cast<size_t>(n_tokens * (act.nb / 8) * kSbBytes));
  plane_layout(act, n_tokens, xs);
  const int64_t per_token = (act.nb / 8) * kSbBytes;
  gemv_rows_by_tokens(r0, r1, n_tokens, [&](auto T, int64_t r, int64_t t0) {
    gemv_row<decltype(T)::value>(W.row(r), act, xs + t0 * per_token, Y + t0 * ldy, ldy, r);
  });
}

}  // namespace qk
}  // namespace pyv4
