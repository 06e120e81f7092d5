// AVX-512 + VNNI indexer scoring on FP4 records (KVType::FP8). Compiled with
// the AVX-512 flags; called only when the active ISA is AVX-512 (which
// includes VNNI, csrc/quant/cpu_features.cpp).
//
// Query and keys are FP4 e2m1 with a UE8M0 scale per 32 elements (spec §3.6),
// so per block b: q·k = s_q s_k / 4 · Σ (2 e2m1_q)(2 e2m1_k), an exact integer
// dot of codes in [-12, 12]. vpdpbusd needs one unsigned operand: the key codes
// are u = 2 e2m1 + 12 in [0, 24], and 12 · Σ q is subtracted per (head, block).
// One broadcast dword of 4 key codes meets 16 heads' 4 query codes at once, so
// a key costs dim/4 · nih/16 vpdpbusd instead of dim · nih / 8 FMAs.
//
// Prepared query (fp4_query), for head group g (16 heads) and block b:
//   codes  [g][b][part][j]: 64 B, lane h = 4 signed codes of head 16g + h at
//          record bytes 16b + 4j .. + 3, low (part 0) or high (part 1) nibbles
//   scale  [g][b]: 16 floats s_q / 4      offset [g][b]: 16 int32 12 · Σ codes
#include <immintrin.h>

#include <cstring>

#include "kv/kv_kernels.h"

namespace pyv4::avx512 {

namespace {

constexpr int64_t kGroupBlockBytes = 8 * 64 + 64 + 64;  // codes, scales, offsets

inline float ue8m0(uint32_t e) {  // 2^(e - 127); e = 0 is the subnormal 2^-127
  const uint32_t bits = e ? e << 23 : 0x00400000u;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline const uint8_t* group_block(const uint8_t* prep, int64_t nblk, int64_t g, int64_t b) {
  return prep + (g * nblk + b) * kGroupBlockBytes;
}

// Score contributions of head groups g0 .. g0 + G - 1 for one key (codes kc of
// the low / high nibbles, block scales ks) added to *sum.
template <int G>
inline void score_groups(const uint8_t* prep, int64_t nblk, int64_t g0, const uint8_t (&kc)[2][256],
                         const float* ks, const float* w, __m512* sum) {
  __m512 d[G];
  for (int g = 0; g < G; ++g) d[g] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nblk; ++b) {
    __m512i acc[G];
    for (int g = 0; g < G; ++g) acc[g] = _mm512_setzero_si512();
#pragma GCC unroll 2
    for (int part = 0; part < 2; ++part) {
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        int32_t k4;
        std::memcpy(&k4, &kc[part][16 * b + 4 * j], 4);
        const __m512i bk = _mm512_set1_epi32(k4);
#pragma GCC unroll 4
        for (int g = 0; g < G; ++g) {
          const uint8_t* q = group_block(prep, nblk, g0 + g, b) + (part * 4 + j) * 64;
          acc[g] = _mm512_dpbusd_epi32(acc[g], bk, _mm512_loadu_si512(q));
        }
      }
    }
    const __m512 kscale = _mm512_set1_ps(ks[b]);
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) {
      const uint8_t* gb = group_block(prep, nblk, g0 + g, b);
      const __m512i off = _mm512_loadu_si512(gb + 8 * 64 + 64);
      const __m512 qscale = _mm512_loadu_ps(reinterpret_cast<const float*>(gb + 8 * 64));
      const __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[g], off));
      d[g] = _mm512_fmadd_ps(f, _mm512_mul_ps(qscale, kscale), d[g]);
    }
  }
  for (int g = 0; g < G; ++g) {
    *sum = _mm512_fmadd_ps(_mm512_max_ps(d[g], _mm512_setzero_ps()), _mm512_loadu_ps(w + 16 * (g0 + g)),
                           *sum);
  }
}

}  // namespace

void fp4_query(const uint8_t* q_recs, int64_t stride, int64_t nih, int64_t dim, uint8_t* prep) {
  static const int8_t kCode[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
  const int64_t nblk = dim / 32;
  for (int64_t h = 0; h < nih; ++h) {
    const uint8_t* rec = q_recs + h * stride;
    const int64_t g = h / 16, lane = h % 16;
    for (int64_t b = 0; b < nblk; ++b) {
      uint8_t* gb = prep + (g * nblk + b) * kGroupBlockBytes;
      int32_t sum = 0;
      for (int k = 0; k < 16; ++k) {
        const uint8_t byte = rec[16 * b + k];
        const int8_t lo = kCode[byte & 15], hi = kCode[byte >> 4];
        gb[(0 * 4 + k / 4) * 64 + 4 * lane + k % 4] = static_cast<uint8_t>(lo);
        gb[(1 * 4 + k / 4) * 64 + 4 * lane + k % 4] = static_cast<uint8_t>(hi);
        sum += lo + hi;
      }
      const float s = ue8m0(rec[dim / 2 + b]) * 0.25f;
      const int32_t off = 12 * sum;
      std::memcpy(gb + 8 * 64 + 4 * lane, &s, 4);
      std::memcpy(gb + 8 * 64 + 64 + 4 * lane, &off, 4);
    }
  }
}

void index_scores_fp4(const uint8_t* prep, const float* w, int64_t nih, int64_t dim,
                      const uint8_t* const* keys, int64_t n, float* out) {
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  const __m512i lut = _mm512_broadcast_i32x4(
      _mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0));  // 2·E2M1 + 12
  const int64_t nblk = dim / 32, nbytes = dim / 2, ng = nih / 16;
  alignas(64) uint8_t kc[2][256];
  float ks[16];
  for (int64_t r = 0; r < n; ++r) {
    const uint8_t* rec = keys[r];
    for (int64_t off = 0; off < nbytes; off += 64) {
      const __mmask64 m = nbytes - off >= 64 ? ~0ull : (1ull << (nbytes - off)) - 1;
      const __m512i z = _mm512_maskz_loadu_epi8(m, rec + off);
      _mm512_store_si512(kc[0] + off, _mm512_shuffle_epi8(lut, _mm512_and_si512(z, m4)));
      _mm512_store_si512(kc[1] + off, _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(z, 4), m4)));
    }
    for (int64_t b = 0; b < nblk; ++b) ks[b] = ue8m0(rec[nbytes + b]);
    __m512 sum = _mm512_setzero_ps();
    int64_t g = 0;
    for (; g + 4 <= ng; g += 4) score_groups<4>(prep, nblk, g, kc, ks, w, &sum);
    for (; g < ng; ++g) score_groups<1>(prep, nblk, g, kc, ks, w, &sum);
    out[r] = _mm512_reduce_add_ps(sum);
  }
}

}  // namespace pyv4::avx512
