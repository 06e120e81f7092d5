// IQ2_XXS GEMV (1..3 tokens) on AVX-512 with VBMI + GFNI (math in
// quant/kernels.h: codes u = signed grid value + 43, the offset through cs).
//
// Decoding, not memory, bounds an IQ2_XXS GEMV: per 8 weights one grid index
// (256 entries of 8 magnitudes) and a 7-bit sign field whose parity is the 8th
// sign. The generic kernel (kernels_lowbit_avx512.cpp) gathers the grid entries
// and computes the parity by shifts, ~25 ns per 256 weights on Zen 4 where the
// bytes arrive in ~7. Here a whole super-block is decoded with byte permutes:
//  1. The grid is re-coded as two bit planes (kPlanes): bit j of P0[i] / P1[i]
//     is bit 0 / 1 of the level code (0, 1, 2 = magnitude 8, 25, 43) of value j
//     of entry i. The 32 indices of a super-block, each twice (once per plane),
//     are looked up in the 4 x 128-byte plane tables by 4 vpermi2b.
//  2. vpmultishiftqb cuts the 4 sign fields of each group out of its sign word.
//  3. Per 64 weights, one vpermi2b builds, in each qword k (8 weights), the
//     bytes P1 | P0 | F of its grid entry at bytes 6, 7, 5 (the rest zero), and
//     one vgf2p8affineqb multiplies that 8x8 bit matrix with the constant byte
//     1 << j in byte j: output byte j = c_j | s_j << 2 (c_j the level code of
//     value j, s_j its sign). For j = 7 the constant byte is 0xFF, so bit 2
//     becomes the parity of the 7-bit field (the 8th sign) and bits 0, 1 the
//     parity of all 8 plane bits: the tables store bit 7 of each plane already
//     xor-ed with the parity of bits 0..6, which leaves c_7.
//  4. vpshufb maps the 3-bit code to u = 43 +- magnitude (0..86).
// The dots are then those of the quad layout: 2 chained vpdpbusd per 128
// weights, the 4 lanes of each block of 4 groups summed by a 4x4 transpose-add
// (kReduce), and one convert + 2 FMAs per 512 weights against dx, cs in the
// order of ActQ::dxr.
#pragma GCC push_options
#pragma GCC target("avx512vbmi,gfni")
#include <immintrin.h>

#include "quant/blocks.h"
#include "quant/iq2xxs_grid.h"
#include "quant/kernels.h"

namespace pyv4 {
namespace qk {
namespace {

using namespace qblocks;

struct Planes {
  uint8_t p[2][256];  // [plane][grid index]
};

// The level code 0 / 1 / 2 of magnitude 8 / 25 / 43.
constexpr uint32_t level_code(uint32_t m) { return m == 8 ? 0 : m == 25 ? 1 : 2; }

constexpr Planes make_planes() {
  Planes t{};
  for (int i = 0; i < 256; ++i)
    for (int b = 0; b < 2; ++b) {
      uint32_t plane = 0;
      for (int j = 0; j < 8; ++j)
        plane |= ((level_code((kIq2xxsGrid[i] >> (8 * j)) & 255) >> b) & 1) << j;
      uint32_t par = 0;
      for (int j = 0; j < 7; ++j) par ^= (plane >> j) & 1;
      t.p[b][i] = static_cast<uint8_t>(plane ^ (par << 7));
    }
  return t;
}
alignas(64) constexpr Planes kPlanes = make_planes();

// The decoded codes of one super-block: V[2n + h] holds group n's A (h = 0:
// elements 0..15 of blocks 4n..4n+3, one 128-bit lane per block) or B (h = 1:
// elements 16..31), as kernels_lowbit_avx512.cpp lays them out.
struct Codes {
  __m512i V[4];
};

// The constant vectors of the decode (built once per call, kept in registers).
struct Consts {
  __m512i t0a, t0b, t1a, t1b, t2a, t2b, t3a, t3b;  // plane 0 / 1, entries 0..127 / 128..255
  __m512i dup, fshift, f7, gf, lut;
  __m512i sel[4];
  Consts() {
    auto ld = [](const uint8_t* p) { return _mm512_load_si512(p); };
    t0a = ld(kPlanes.p[0]), t0b = ld(kPlanes.p[0] + 64), t1a = ld(kPlanes.p[0] + 128),
    t1b = ld(kPlanes.p[0] + 192);
    t2a = ld(kPlanes.p[1]), t2b = ld(kPlanes.p[1] + 64), t3a = ld(kPlanes.p[1] + 128),
    t3b = ld(kPlanes.p[1] + 192);
    // qword b (block b) of the index vector: its 4 grid indices twice
    dup = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 2, 3, 0, 1, 2, 3, 8, 9, 10, 11, 8, 9, 10, 11));
    // bytes 0..3 of qword b: the 4 sign fields (bits 32 + 7l of the block's qword)
    fshift = _mm512_set1_epi64(0x00000000352E2720LL);
    f7 = _mm512_set1_epi8(0x7F);
    gf = _mm512_set1_epi64(static_cast<long long>(0xFF40201008040201ULL));
    lut = _mm512_broadcast_i32x4(_mm_setr_epi8(51, 68, 86, 0, 35, 18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0));
    // Output vector v = 2n + h, qword k: entry l = 2h + k % 2 of block b = 4n + k / 2;
    // bytes 5, 6, 7 <- F (second source, byte 8b + l), P1 (8b + 4 + l), P0 (8b + l).
    for (int v = 0; v < 4; ++v) {
      alignas(64) uint8_t s[64] = {};
      const int n = v / 2, h = v % 2;
      for (int k = 0; k < 8; ++k) {
        const int b = 4 * n + k / 2, l = 2 * h + k % 2;
        s[8 * k + 5] = static_cast<uint8_t>(64 + 8 * b + l);
        s[8 * k + 6] = static_cast<uint8_t>(8 * b + 4 + l);
        s[8 * k + 7] = static_cast<uint8_t>(8 * b + l);
      }
      sel[v] = _mm512_load_si512(s);
    }
  }
};

// Decodes the super-block at p (returns its 64 code bytes as loaded, for the scales).
inline __m512i decode(const Consts& c, const uint8_t* p, Codes* out) {
  const BlockIQ2_XXS* blk = reinterpret_cast<const BlockIQ2_XXS*>(p);
  const __m512i q = _mm512_loadu_si512(blk->qs);
  const __m512i idx = _mm512_shuffle_epi8(q, c.dup);
  const __mmask64 hi = _mm512_movepi8_mask(idx);                       // index >= 128
  const __mmask64 p1 = _cvtu64_mask64(0xF0F0F0F0F0F0F0F0ULL);          // plane-1 slots
  const __m512i r0 = _mm512_permutex2var_epi8(c.t0a, idx, c.t0b);
  const __m512i r1 = _mm512_permutex2var_epi8(c.t1a, idx, c.t1b);
  const __m512i r2 = _mm512_permutex2var_epi8(c.t2a, idx, c.t2b);
  const __m512i r3 = _mm512_permutex2var_epi8(c.t3a, idx, c.t3b);
  const __m512i pl = _mm512_mask_blend_epi8(
      p1, _mm512_mask_blend_epi8(hi, r0, r1), _mm512_mask_blend_epi8(hi, r2, r3));
  const __m512i f = _mm512_and_si512(_mm512_multishift_epi64_epi8(c.fshift, q), c.f7);
  const __mmask64 rows = _cvtu64_mask64(0xE0E0E0E0E0E0E0E0ULL);
#pragma GCC unroll 4
  for (int v = 0; v < 4; ++v) {
    const __m512i m = _mm512_maskz_permutex2var_epi8(rows, pl, c.sel[v], f);
    out->V[v] = _mm512_shuffle_epi8(c.lut, _mm512_gf2p8affine_epi64_epi8(c.gf, m, 0));
  }
  return q;
}

// dw of the 16 blocks of super-blocks q0 (blocks 0..7, scale d0) and q1 (8..15,
// d1) in the order of ActQ::dxr (dword 4L + m = block 4m + L).
inline __m512 scales16(__m512i q0, __m512i q1, float d0, float d1) {
  // block b's sign word is dword 2b + 1 of its super-block's codes
  const __m512i pick = _mm512_setr_epi32(1, 9, 17, 25, 3, 11, 19, 27, 5, 13, 21, 29, 7, 15, 23, 31);
  const __m512i sw = _mm512_permutex2var_epi32(q0, pick, q1);
  const __m512 s = _mm512_cvtepi32_ps(_mm512_srli_epi32(sw, 28));
  const __m512 d = _mm512_mask_blend_ps(0xCCCC, _mm512_set1_ps(0.25f * d0), _mm512_set1_ps(0.25f * d1));
  return _mm512_mul_ps(_mm512_add_ps(s, _mm512_set1_ps(0.5f)), d);
}

// Sum of the 4 lanes of each block of 4 quad-group results: dword 4L + d of the
// result is block L of group d (the order of ActQ::dxr).
inline __m512i reduce4(__m512i p0, __m512i p1, __m512i p2, __m512i p3) {
  const __m512i t0 = _mm512_add_epi32(_mm512_unpacklo_epi32(p0, p1), _mm512_unpackhi_epi32(p0, p1));
  const __m512i t1 = _mm512_add_epi32(_mm512_unpacklo_epi32(p2, p3), _mm512_unpackhi_epi32(p2, p3));
  return _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
}

// Exact int32 dot of quad group g (codes A, B) with token t, 4 lanes per block.
inline __m512i group_dot(__m512i A, __m512i B, const ActQ& a, int64_t t, int64_t g) {
  const int8_t* xq = a.q(t) + 128 * g;
  return _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), A, _mm512_loadu_si512(xq)),
                             B, _mm512_loadu_si512(xq + 64));
}

template <int T>
void gemv_row(const Consts& c, const uint8_t* row, const ActQ& a, int64_t t0, float* Y,
              int64_t ldy, int64_t r) {
  const int64_t nsb = a.nb / 8;
  __m512 acc[T][2];
  for (int t = 0; t < T; ++t) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
  constexpr size_t kB = sizeof(BlockIQ2_XXS);
  int64_t sb = 0;
  for (; sb + 2 <= nsb; sb += 2) {
    Codes x, y;
    const uint8_t* p = row + sb * kB;
    const __m512i q0 = decode(c, p, &x), q1 = decode(c, p + kB, &y);
    const __m512 dw = scales16(q0, q1, _cvtsh_ss(load_u16(p)), _cvtsh_ss(load_u16(p + kB)));
    const int64_t s = sb / 2;  // 16-block set (4 quad groups from group 4s)
#pragma GCC unroll 3
    for (int t = 0; t < T; ++t) {
      const __m512i P = reduce4(group_dot(x.V[0], x.V[1], a, t0 + t, 4 * s),
                                group_dot(x.V[2], x.V[3], a, t0 + t, 4 * s + 1),
                                group_dot(y.V[0], y.V[1], a, t0 + t, 4 * s + 2),
                                group_dot(y.V[2], y.V[3], a, t0 + t, 4 * s + 3));
      const __m512 DX = _mm512_loadu_ps(a.dr(t0 + t) + 16 * s);
      const __m512 KC = _mm512_loadu_ps(a.cr(t0 + t) + 16 * s);
      acc[t][s & 1] = _mm512_fmadd_ps(_mm512_fmsub_ps(_mm512_cvtepi32_ps(P), DX, KC), dw, acc[t][s & 1]);
    }
  }
  if (sb < nsb) {  // a last, odd super-block: groups 4s, 4s + 1 (the rest zero)
    Codes x;
    const uint8_t* p = row + sb * kB;
    const __m512i q0 = decode(c, p, &x);
    const __m512 dw = scales16(q0, _mm512_setzero_si512(), _cvtsh_ss(load_u16(p)), 0.0f);
    const int64_t s = sb / 2;
    const __m512i z = _mm512_setzero_si512();
    for (int t = 0; t < T; ++t) {
      const __m512i P = reduce4(group_dot(x.V[0], x.V[1], a, t0 + t, 4 * s),
                                group_dot(x.V[2], x.V[3], a, t0 + t, 4 * s + 1), z, z);
      const __m512 DX = _mm512_loadu_ps(a.dr(t0 + t) + 16 * s);
      const __m512 KC = _mm512_loadu_ps(a.cr(t0 + t) + 16 * s);
      acc[t][0] = _mm512_fmadd_ps(_mm512_fmsub_ps(_mm512_cvtepi32_ps(P), DX, KC), dw, acc[t][0]);
    }
  }
  for (int t = 0; t < T; ++t)
    Y[(t0 + t) * ldy + r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]));
}

}  // namespace

void gemv_iq2xxs_avx512(const WeightMatrix& W, const ActQ& act, int64_t n_tokens, float* Y,
                        int64_t ldy, int64_t r0, int64_t r1) {
  const Consts c;
  for (int64_t r = r0; r < r1; ++r) {
    if (n_tokens == 1)
      gemv_row<1>(c, W.row(r), act, 0, Y, ldy, r);
    else if (n_tokens == 2)
      gemv_row<2>(c, W.row(r), act, 0, Y, ldy, r);
    else
      gemv_row<3>(c, W.row(r), act, 0, Y, ldy, r);
  }
}

}  // namespace qk
}  // namespace pyv4
#pragma GCC pop_options
