// IQ1_S / IQ1_M GEMV (tokens in groups of 1..3) on AVX-512 (math in quant/kernels.h and
// below; block layouts in quant/blocks.h).
//
// Looking up the grid, not memory, bounds an IQ1 GEMV: every 8 weights are one
// of 2048 grid entries (8 values in {-1, 0, 1}), too many for register-held
// byte tables, so each super-block needs 32 table loads. On Zen 4 scalar loads
// of the entries cost ~1 cycle each, qword gathers more (~10 ns of a super-block
// inside this loop against ~9). The generic quad kernels spent as much again on
// offset codes and 16-bit pair sums times the sub-block scales. Here the codes
// are the table bytes, u = grid + 1 (0..2), and everything per sub-block s (16
// weights: grid entries 2s, 2s + 1) is done once in float:
//   sum_{i in s} w_i x_i = W_s dx (D_s - 7/8 Q_s - 1/4 sum_{e in s} bit_e Q_e)
// with W_s = d (2 sc_s + 1), bit_e the delta's sign bit of entry e (delta =
// +1/8, or -1/8 where set: -1 + delta = -7/8 - bit / 4), D_s = sum u_i q_i
// (exact int32) and Q_s / Q_e the sums of q over the sub-block / entry e. The
// activations are re-laid once per call so that 4 chained vpdpbusd leave
// sub-block s's dot in dwords 2s, 2s + 1 (s < 8) of one vector and 2(s - 8),
// 2(s - 8) + 1 of another; Q_e, Q_s and dx come precomputed per sub-block in
// float vectors beside them (xe_layout).
// IQ1_S is IQ1_M with its scale and delta per 32-block (both sub-blocks and all
// 4 entries share them).
#include <immintrin.h>

#include "quant/blocks.h"
#include "quant/iq1s_grid.h"
#include "quant/kernels.h"
#include "quant/simd_avx512.h"
#include "quant/tile_drive.h"

namespace pyv4 {
namespace qk {
namespace {

using namespace qblocks;

// The grid entries kIq1sGrid[ix[0..7]] in the qwords of one vector (scalar
// loads: see the top of the file).
inline __m128i grid2(const uint32_t* ix) {
  return _mm_insert_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(kIq1sGrid + ix[0])),
                          static_cast<long long>(kIq1sGrid[ix[1]]), 1);
}
inline __m512i grid8(const uint32_t* ix) {
  const __m256i a = _mm256_inserti128_si256(_mm256_castsi128_si256(grid2(ix)), grid2(ix + 2), 1);
  const __m256i b = _mm256_inserti128_si256(_mm256_castsi128_si256(grid2(ix + 4)), grid2(ix + 6), 1);
  return _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
}

// One super-block row decoded: the codes u in the order of the activations'
// vectors (qword i of g[0] / g[1]: entry 2i / 2i + 1, of g[2] / g[3]: entry
// 16 + 2i / 17 + 2i), the sub-block weight scales W_s (float s) and the delta
// bits of entries 2s / 2s + 1 (bit s of me / mo).
struct RowCodes {
  __m512i g[4];
  __m512 w;
  __mmask16 me, mo;
};

// The codes of 32 entries whose grid indices are dword s of even / odd.
inline void lookup(__m512i even, __m512i odd, RowCodes* r) {
  alignas(64) uint32_t ix[32];
  _mm512_store_si512(ix, even);
  _mm512_store_si512(ix + 16, odd);
  r->g[0] = grid8(ix), r->g[1] = grid8(ix + 16);
  r->g[2] = grid8(ix + 8), r->g[3] = grid8(ix + 24);
}

// W_s = d * (2 sc_s + 1) for the scale sc_s of sub-block s in dword s.
inline __m512 odd_scales(__m512i sc, float d) {
  return _mm512_fmadd_ps(_mm512_cvtepi32_ps(sc), _mm512_set1_ps(2 * d), _mm512_set1_ps(d));
}

struct DecIQ1_M {
  static constexpr size_t kBytes = sizeof(BlockIQ1_M);
  static inline void decode(const uint8_t* p, RowCodes* r) {
    const BlockIQ1_M& blk = *reinterpret_cast<const BlockIQ1_M*>(p);
    // dword s: qs[2s] | qs[2s + 1] << 8, and qh[s] (entry 2s's high bits and
    // delta bit in its low nibble, entry 2s + 1's in its high nibble)
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qs)));
    const __m512i h = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.qh)));
    const __m512i m7 = _mm512_set1_epi32(0x700);
    const __m512i even = _mm512_ternarylogic_epi32(_mm512_set1_epi32(0xFF), w,
                                                   _mm512_and_si512(_mm512_slli_epi32(h, 8), m7), 0xEA);  // a & b | c
    lookup(even, _mm512_or_si512(_mm512_srli_epi32(w, 8), _mm512_and_si512(_mm512_slli_epi32(h, 4), m7)),
           r);
    r->me = _mm512_test_epi32_mask(h, _mm512_set1_epi32(0x08));
    r->mo = _mm512_test_epi32_mask(h, _mm512_set1_epi32(0x80));
    // sub-block s: bits 3 (s % 4) of scale word s / 4
    const __m512i sw = _mm512_permutexvar_epi32(
        _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
        _mm512_castsi128_si512(_mm_cvtepu16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk.scales)))));
    const __m512i sc = _mm512_and_si512(
        _mm512_srlv_epi32(sw, _mm512_setr_epi32(0, 3, 6, 9, 0, 3, 6, 9, 0, 3, 6, 9, 0, 3, 6, 9)), _mm512_set1_epi32(7));
    r->w = odd_scales(sc, _cvtsh_ss(iq1m_d(blk)));
  }
};

struct DecIQ1_S {
  static constexpr size_t kBytes = sizeof(BlockIQ1_S);
  static inline void decode(const uint8_t* p, RowCodes* r) {
    const BlockIQ1_S& blk = *reinterpret_cast<const BlockIQ1_S*>(p);
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qs)));
    // dword s: the qh word of block s / 2; entries 2s, 2s + 1 are its indices
    // 2 (s % 2) and 2 (s % 2) + 1 (high bits at 3l)
    const __m512i h = _mm512_permutexvar_epi32(
        _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7),
        _mm512_castsi256_si512(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.qh)))));
    const __m512i m7 = _mm512_set1_epi32(0x700);
    const __m512i he = _mm512_sllv_epi32(h, _mm512_setr_epi32(8, 2, 8, 2, 8, 2, 8, 2, 8, 2, 8, 2, 8, 2, 8, 2));
    const __m512i ho =
        _mm512_srlv_epi32(_mm512_slli_epi32(h, 5), _mm512_setr_epi32(0, 6, 0, 6, 0, 6, 0, 6, 0, 6, 0, 6, 0, 6, 0, 6));
    lookup(_mm512_ternarylogic_epi32(_mm512_set1_epi32(0xFF), w, _mm512_and_si512(he, m7), 0xEA),
           _mm512_or_si512(_mm512_srli_epi32(w, 8), _mm512_and_si512(ho, m7)), r);
    r->me = r->mo = _mm512_test_epi32_mask(h, _mm512_set1_epi32(0x8000));
    r->w = odd_scales(_mm512_and_si512(_mm512_srli_epi32(h, 12), _mm512_set1_epi32(7)), _cvtsh_ss(blk.d));
  }
};

// Bytes per super-block and token of the re-laid activations: 4 vectors of q,
// then 4 of floats per sub-block: dx, -7/8 dx Q_s, and -1/4 dx Q_e of the even
// and of the odd entries.
constexpr int64_t kXeBytes = 512;

// The activations of every token per super-block s at xe + (t * nsb + s) * 512:
// vector 0 / 1 (2 / 3): qword i = elements of entry 2i / 2i + 1 of sub-block i
// (8 + i). In the quad layout sub-block s is lane (s / 2) % 4 of part A (s
// even) or B (s odd) of quad group s / 8, entry 2s its low qword.
inline void xe_layout(const ActQ& a, int64_t n_tokens, int8_t* xe) {
  const int64_t nsb = a.nb / 8;
  const __m512i ev = _mm512_setr_epi64(0, 8, 2, 10, 4, 12, 6, 14), od = _mm512_setr_epi64(1, 9, 3, 11, 5, 13, 7, 15);
  const __m512i lo = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i pairs = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
  const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t s = 0; s < nsb; ++s) {
      const int8_t* q = a.q(t) + 256 * s;
      const __m512i a0 = _mm512_loadu_si512(q), b0 = _mm512_loadu_si512(q + 64);
      const __m512i a1 = _mm512_loadu_si512(q + 128), b1 = _mm512_loadu_si512(q + 192);
      const __m512i x[4] = {_mm512_permutex2var_epi64(a0, ev, b0), _mm512_permutex2var_epi64(a0, od, b0),
                            _mm512_permutex2var_epi64(a1, ev, b1), _mm512_permutex2var_epi64(a1, od, b1)};
      int8_t* o = xe + (t * nsb + s) * kXeBytes;
      __m512i sums[4];  // qword i: sum of (q + 128) over the entry
      for (int v = 0; v < 4; ++v) {
        _mm512_store_si512(o + 64 * v, x[v]);
        sums[v] = _mm512_sad_epu8(_mm512_xor_si512(x[v], bias), _mm512_setzero_si512());
      }
      // float s: entry 2s's (even) and 2s + 1's (odd) sums of q
      const __m512i k1024 = _mm512_set1_epi32(1024);
      const __m512 qe = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_permutex2var_epi32(sums[0], lo, sums[2]), k1024));
      const __m512 qo = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_permutex2var_epi32(sums[1], lo, sums[3]), k1024));
      const __m512 dx = _mm512_permutexvar_ps(pairs, _mm512_castps256_ps512(_mm256_loadu_ps(a.d(t) + 8 * s)));
      float* f = reinterpret_cast<float*>(o + 256);
      _mm512_store_ps(f, dx);
      _mm512_store_ps(f + 16, _mm512_mul_ps(_mm512_mul_ps(dx, _mm512_set1_ps(-0.875f)), _mm512_add_ps(qe, qo)));
      _mm512_store_ps(f + 32, _mm512_mul_ps(_mm512_mul_ps(dx, _mm512_set1_ps(-0.25f)), qe));
      _mm512_store_ps(f + 48, _mm512_mul_ps(_mm512_mul_ps(dx, _mm512_set1_ps(-0.25f)), qo));
    }
  }
}

template <class Dec, int T>
void gemv_row(const uint8_t* row, const ActQ& a, const int8_t* xe, float* Y, int64_t ldy, int64_t r) {
  const int64_t nsb = a.nb / 8;
  const __m512i lo = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i hi = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  __m512 acc[T];
#pragma GCC unroll 3
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t sb = 0; sb < nsb; ++sb) {
    const uint8_t* p = row + sb * Dec::kBytes;
    prefetch_stream(p, 64);
    RowCodes c;
    Dec::decode(p, &c);
#pragma GCC unroll 3
    for (int t = 0; t < T; ++t) {
      const int8_t* x = xe + (t * nsb + sb) * kXeBytes;
      const __m512i P0 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), c.g[0], _mm512_load_si512(x)),
                                             c.g[1], _mm512_load_si512(x + 64));
      const __m512i P1 = _mm512_dpbusd_epi32(
          _mm512_dpbusd_epi32(_mm512_setzero_si512(), c.g[2], _mm512_load_si512(x + 128)), c.g[3],
          _mm512_load_si512(x + 192));
      // dword s: D_s, the sum of dwords 2s, 2s + 1 of P0 (s < 8) or P1
      const __m512i D = _mm512_add_epi32(_mm512_permutex2var_epi32(P0, lo, P1), _mm512_permutex2var_epi32(P0, hi, P1));
      const float* f = reinterpret_cast<const float*>(x + 256);
      __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(D), _mm512_load_ps(f), _mm512_load_ps(f + 16));
      v = _mm512_mask_add_ps(v, c.me, v, _mm512_load_ps(f + 32));
      v = _mm512_mask_add_ps(v, c.mo, v, _mm512_load_ps(f + 48));
      acc[t] = _mm512_fmadd_ps(v, c.w, acc[t]);
    }
  }
#pragma GCC unroll 3
  for (int t = 0; t < T; ++t) Y[t * ldy + r] = _mm512_reduce_add_ps(acc[t]);
}

template <class Dec>
void gemv_rows(const WeightMatrix& W, const ActQ& act, int64_t n_tokens, float* Y, int64_t ldy, int64_t r0,
               int64_t r1) {
  const int64_t nsb = act.nb / 8;
  int8_t* xe = reinterpret_cast<int8_t*>(scratch_bytes(static_cast<size_t>(n_tokens * nsb * kXeBytes)));
  xe_layout(act, n_tokens, xe);
  gemv_rows_by_tokens(r0, r1, n_tokens, [&](auto T, int64_t r, int64_t t0) {
    gemv_row<Dec, decltype(T)::value>(W.row(r), act, xe + t0 * nsb * kXeBytes, Y + t0 * ldy, ldy, r);
  });
}

}  // namespace

void gemv_iq1_avx512(const WeightMatrix& W, const ActQ& act, int64_t n_tokens, float* Y, int64_t ldy,
                     int64_t r0, int64_t r1) {
  if (W.type == GGMLType::IQ1_M)
    gemv_rows<DecIQ1_M>(W, act, n_tokens, Y, ldy, r0, r1);
  else
    gemv_rows<DecIQ1_S>(W, act, n_tokens, Y, ldy, r0, r1);
}

}  // namespace qk
}  // namespace pyv4
