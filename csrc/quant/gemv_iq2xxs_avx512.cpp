// IQ2_XXS GEMV (tokens in groups of 1..3) on AVX-512 with VBMI + GFNI (math in
// quant/kernels.h: codes u = signed grid value + 43, the offset through cs).
//
// Decoding, not memory, bounds an IQ2_XXS GEMV: per 8 weights one grid index
// (256 entries of 8 magnitudes) and a 7-bit sign field whose parity is the 8th
// sign. The generic kernel (kernels_lowbit_avx512.cpp) gathers the grid entries
// and computes the parity by shifts, ~25 ns per 256 weights on Zen 4 where the
// bytes arrive in ~3-7. Here two super-blocks at a time are decoded with byte
// permutes. What bounds it on Zen 4 (family 25 model 17, independent zmm ops
// timed in a scratch loop): permutes alone issue 1 a cycle, and so do
// vpdpbusd / vgf2p8affineqb / FMA-class ops alone, but an even mix of the two
// only ~1.27 a cycle (20 + 20 in 31.5 cycles), and masked blends then cost
// ~0.4 each. A pair of super-blocks at 1 token is 23 permute-class ops, 16
// dot/FMA-class and 7 blend/mask ops: 32.4 cycles when all are independent;
// the loop takes ~37 (4.95-5.3 ns per super-block at ~3.7 GHz), within ~15 %
// of that, so only fewer ops (not another schedule) would make it faster:
//  1. The grid is re-coded as two bit planes (kPlanes): bit j of P0[i] / P1[i]
//     is bit 0 / 1 of the level code (0, 1, 2 = magnitude 8, 25, 43) of value j
//     of entry i. The 64 indices of two super-blocks, gathered into one vector,
//     are looked up in the 4 x 128-byte plane tables by 4 vpermi2b.
//  2. vpmultishiftqb cuts the 4 sign fields of each group out of its sign word.
//  3. Per 128 weights (two grid entries per qword k), one vpermi2b builds in
//     qword k the bytes P0, P1, F of one entry at bytes 7, 6, 5 and of the other
//     at 4, 3, 2 (bytes 1, 0 zero), and one vgf2p8affineqb multiplies that 8x8
//     bit matrix with the constant byte 1 << j in byte j: output byte j =
//     c_j | s_j << 2 | c'_j << 3 | s'_j << 5 (c_j the level code of value j,
//     s_j its sign). For j = 7 the constant byte is 0xFF, so the sign bits
//     become the parity of the 7-bit field (the 8th sign) and the code bits the
//     parity of all 8 plane bits: the tables store bit 7 of each plane already
//     xor-ed with the parity of bits 0..6, which leaves c_7.
//  4. Two vpermb map the 3-bit codes to u = 43 +- magnitude (0..86).
// The codes come out by grid entry (vector l, qword b = entry l of block b), so
// the activations are re-laid once per call to that order (entry_layout): 4
// chained vpdpbusd per super-block leave each block's dot in 2 dwords, two
// in-lane shuffles sum them for 16 blocks, and one convert + 2 FMAs per 512 weights
// apply dx, the offset cs and dw.
// Built with -mavx512vbmi -mgfni besides the AVX-512 flags (CMakeLists.txt).
#include <immintrin.h>

#include "quant/blocks.h"
#include "quant/iq2xxs_grid.h"
#include "quant/kernels.h"
#include "quant/simd_avx512.h"
#include "quant/tile_drive.h"

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

// The byte tables of the decode's constant vectors, built at compile time (a
// GEMV call runs once per piece of rows a thread claims, ~16-28 per matrix
// on 2 threads: built per call by scalar loops, they and the scalar re-layout
// of dx / cs cost ~0.5 us a call).
struct Tables {
  // The grid indices of both super-blocks in one vector: qword b holds block b's
  // 4 indices of the first (bytes 0..3) and of the second super-block (4..7).
  uint8_t gather[64];
  // u = 43 +- magnitude of the 3-bit code c | s << 2 in bits 0..2 (lut[0]) or 3..5 (lut[1])
  uint8_t lut[2][64];
  // Super-block h of the pair, entries l = 2p, 2p + 1 of every block b: qword b of
  // the matrix vector gets bytes 7, 6, 5 <- P0, P1, F of entry (b, 2p) and bytes 4,
  // 3, 2 <- those of (b, 2p + 1). Sources: the plane-0 vector (P0 at byte 8b + l,
  // 8b + 4 + l for h = 1) and a plane-1 vector holding h's sign fields in the
  // other half of each qword (P1 at 8b + l and F at 8b + 4 + l; for h = 1 the
  // halves swap).
  uint8_t sel[2][2][64];  // [super-block of the pair][entry pair]
};

constexpr Tables make_tables() {
  Tables t{};
  for (int i = 0; i < 64; ++i) t.gather[i] = static_cast<uint8_t>(8 * (i / 8) + i % 4 + (i % 8 >= 4 ? 64 : 0));
  const uint8_t u8[8] = {51, 68, 86, 0, 35, 18, 0, 0};
  for (int i = 0; i < 64; ++i) t.lut[0][i] = u8[i & 7], t.lut[1][i] = u8[i >> 3];
  for (int h = 0; h < 2; ++h)
    for (int p = 0; p < 2; ++p)
      for (int b = 0; b < 8; ++b)
        for (int e = 0; e < 2; ++e) {
          const int l = 2 * p + e, at = 8 * b + 7 - 3 * e, own = 4 * h, other = 4 - 4 * h;
          t.sel[h][p][at] = static_cast<uint8_t>(8 * b + own + l);
          t.sel[h][p][at - 1] = static_cast<uint8_t>(64 + 8 * b + own + l);
          t.sel[h][p][at - 2] = static_cast<uint8_t>(64 + 8 * b + other + l);
        }
  return t;
}
alignas(64) constexpr Tables kTables = make_tables();

// The constant vectors of the decode (loaded once per call, kept in registers).
struct Consts {
  __m512i t0a, t0b, t1a, t1b, t2a, t2b, t3a, t3b;  // plane 0 / 1, entries 0..127 / 128..255
  __m512i gather, fshift[2], f7, gf, lut[2];
  __m512 quarter;  // (i + 0.5) / 4 for the scale nibble i
  __m512i sel[2][2];  // [super-block of the pair][entry pair]
  Consts() {
    auto ld = [](const uint8_t* p) { return _mm512_load_si512(p); };
    t0a = ld(kPlanes.p[0]), t0b = ld(kPlanes.p[0] + 64), t1a = ld(kPlanes.p[0] + 128),
    t1b = ld(kPlanes.p[0] + 192);
    t2a = ld(kPlanes.p[1]), t2b = ld(kPlanes.p[1] + 64), t3a = ld(kPlanes.p[1] + 128),
    t3b = ld(kPlanes.p[1] + 192);
    gather = ld(kTables.gather);
    // the 4 sign fields of qword b (block b), bits 32 + 7l, to bytes 4..7 (first
    // super-block) or 0..3 (second), and the scale nibble (bits 60..63) to the
    // low bits of the other dword
    fshift[0] = _mm512_set1_epi64(0x352E27200000003CLL);
    fshift[1] = _mm512_set1_epi64(0x0000003C352E2720LL);
    f7 = _mm512_set1_epi8(0x7F);
    gf = _mm512_set1_epi64(static_cast<long long>(0xFF40201008040201ULL));
    lut[0] = ld(kTables.lut[0]), lut[1] = ld(kTables.lut[1]);
    quarter = _mm512_setr_ps(0.125f, 0.375f, 0.625f, 0.875f, 1.125f, 1.375f, 1.625f, 1.875f, 2.125f,
                             2.375f, 2.625f, 2.875f, 3.125f, 3.375f, 3.625f, 3.875f);
    for (int h = 0; h < 2; ++h)
      for (int p = 0; p < 2; ++p) sel[h][p] = ld(kTables.sel[h][p]);
  }
};

// The decode of a pair of super-blocks in two steps, so that the row loop can
// run the first one a pair ahead (gemv_row). Step 1: the plane bytes of the 64
// grid indices of the super-blocks at p and p + 66 (none if !two: zero codes)
// and their sign fields.
struct PairLookups {
  __m512i p0, p1;  // plane 0 / 1 of the grid entries, in the order of c.gather
  __m512i f[2];    // super-block h's sign fields and scale nibble (c.fshift[h])
};

inline PairLookups lookup_pair(const Consts& c, const uint8_t* p, bool two) {
  constexpr size_t kB = sizeof(BlockIQ2_XXS);
  const __m512i q0 = _mm512_loadu_si512(reinterpret_cast<const BlockIQ2_XXS*>(p)->qs);
  const __m512i q1 =
      two ? _mm512_loadu_si512(reinterpret_cast<const BlockIQ2_XXS*>(p + kB)->qs) : _mm512_setzero_si512();
  // the 64 grid indices (4 per block and super-block), looked up in both planes;
  // bit 7 picks the table half
  const __m512i idx = _mm512_permutex2var_epi8(q0, c.gather, q1);
  const __mmask64 hi = _mm512_movepi8_mask(idx);
  PairLookups l;
  l.p0 = _mm512_mask_blend_epi8(hi, vpermi2b_lookup(idx, c.t0a, c.t0b), vpermi2b_lookup(idx, c.t1a, c.t1b));
  l.p1 = _mm512_mask_blend_epi8(hi, vpermi2b_lookup(idx, c.t2a, c.t2b), vpermi2b_lookup(idx, c.t3a, c.t3b));
  l.f[0] = _mm512_multishift_epi64_epi8(c.fshift[0], q0);
  l.f[1] = _mm512_multishift_epi64_epi8(c.fshift[1], q1);
  return l;
}

// Step 2: the codes into W[h][l] (qword b = the 8 codes of grid entry l of block b
// of super-block h, as the activations are laid out by entry_layout); returns the
// scale nibbles of block b of super-block h in the low bits of dword 2b + h.
inline __m512i expand_pair(const Consts& c, const PairLookups& l, __m512i (&W)[2][4]) {
  const __mmask64 rows = _cvtu64_mask64(0xFCFCFCFCFCFCFCFCULL);
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h) {
    // super-block h's sign fields (7 bits) replace the other one's plane-1 bytes
    const __m512i pf = _mm512_mask_and_epi32(l.p1, h ? 0x5555 : 0xAAAA, l.f[h], c.f7);
#pragma GCC unroll 2
    for (int pr = 0; pr < 2; ++pr) {
      const __m512i m = _mm512_maskz_permutex2var_epi8(rows, l.p0, c.sel[h][pr], pf);
      const __m512i g = _mm512_gf2p8affine_epi64_epi8(c.gf, m, 0);
      W[h][2 * pr] = _mm512_permutexvar_epi8(g, c.lut[0]);
      W[h][2 * pr + 1] = _mm512_permutexvar_epi8(g, c.lut[1]);
    }
  }
  return _mm512_mask_blend_epi32(0xAAAA, l.f[0], l.f[1]);
}

// The activations of every token re-laid by grid entry, what decode's codes
// multiply: super-block s of token t at xe + (t * nsb + s) * 256, 4 vectors,
// qword b of vector l = elements 8l..8l+7 of block 8s + b. In the quad layout
// those are qword 2j + l (l < 2, in A) or 2j + l - 2 (B) of group 2s + b / 4,
// j = b % 4. Per token and 16 blocks (super-blocks 2s', 2s' + 1), dx and 4 * cs (the
// offset of a block's 4 lanes) in the order of expand_pair's scale nibbles: float
// 2b + h of dk + t * 2 * nbr + 32s' is dx of block b of super-block h, float
// 16 + 2b + h its offset (zero past nb).
inline void entry_layout(const ActQ& a, int64_t n_tokens, int8_t* xe, float* dk) {
  const int64_t nsb = a.nb / 8;
  const __m512i even = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
  const __m512i odd = _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t s = 0; s < nsb; ++s) {
      const int8_t* q = a.q(t) + 256 * s;  // quad groups 2s, 2s + 1
      const __m512i a0 = _mm512_loadu_si512(q), b0 = _mm512_loadu_si512(q + 64);
      const __m512i a1 = _mm512_loadu_si512(q + 128), b1 = _mm512_loadu_si512(q + 192);
      int8_t* o = xe + (t * nsb + s) * 256;
      _mm512_store_si512(o, _mm512_permutex2var_epi64(a0, even, a1));
      _mm512_store_si512(o + 64, _mm512_permutex2var_epi64(a0, odd, a1));
      _mm512_store_si512(o + 128, _mm512_permutex2var_epi64(b0, even, b1));
      _mm512_store_si512(o + 192, _mm512_permutex2var_epi64(b0, odd, b1));
    }
    // float i of 16 is block 8 (i % 2) + i / 2 of the 16 (masked loads: dx and cs
    // hold nb_pad floats, and the floats past nb are zero)
    const __m512i order = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
    float* o = dk + t * 2 * a.nbr;
    for (int64_t g = 0; g < a.nbr / 16; ++g) {
      const int64_t left = a.nb - 16 * g;
      const __mmask16 m = left >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1);
      const __m512 d = _mm512_maskz_loadu_ps(m, a.d(t) + 16 * g);
      const __m512 k = _mm512_maskz_loadu_ps(m, a.c(t) + 16 * g);
      _mm512_store_ps(o + 32 * g, _mm512_permutexvar_ps(order, d));
      _mm512_store_ps(o + 32 * g + 16, _mm512_mul_ps(_mm512_permutexvar_ps(order, k), _mm512_set1_ps(4.0f)));
    }
  }
}

// Exact int32 dots of one super-block's codes with its activations: dword 2b + h
// of the result sums elements 4h..4h+3 of each entry of block b.
inline __m512i sb_dot(const __m512i (&W)[4], const int8_t* x) {
  __m512i P = _mm512_dpbusd_epi32(_mm512_setzero_si512(), W[0], _mm512_load_si512(x));
#pragma GCC unroll 3
  for (int l = 1; l < 4; ++l) P = _mm512_dpbusd_epi32(P, W[l], _mm512_load_si512(x + 64 * l));
  return P;
}

template <int T>
void gemv_row(const Consts& c, const uint8_t* row, const ActQ& a, const int8_t* xe,
              const float* dk, float* Y, int64_t ldy, int64_t r) {
  const int64_t nsb = a.nb / 8;
  constexpr size_t kB = sizeof(BlockIQ2_XXS);
  const __m512i alt = _mm512_setr_epi32(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1);
  __m512 acc[T];
#pragma GCC unroll 3
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  // The lookups of the pair after the current one are issued before the current
  // pair's expansion: with the chain load -> gather -> plane lookups -> expansion ->
  // dots in one iteration, the out-of-order window (not the vector pipes) bounded
  // the loop on Zen 4 (family 25 model 17, 1 thread, rows in L2, ns per 256
  // weights: 5.8 -> 5.3 at 1 token, 9.7 -> 8.5 at 3). Two pairs ahead, or the
  // expansion a pair ahead too, ran slower (5.6: registers spill).
  PairLookups next = lookup_pair(c, row, nsb > 1);
  for (int64_t sb = 0; sb < nsb; sb += 2) {
    // super-blocks sb and sb + 1 (a missing last one decodes as zero codes, d = 0)
    const bool two = sb + 1 < nsb;
    const uint8_t* p = row + sb * kB;
    // The hardware prefetcher alone left ~25 % of a DRAM-fed GEMV in stalls (1
    // thread, Zen 4: 7.5-8.7 -> 6.3-6.6 ns per super-block with T0 2 KB ahead). Into
    // L2 instead, on the Xeon (experts_decode's IQ2_XXS-only step, 96 experts, 2
    // threads, median ms): T0 2 KB 2.10-2.13, T1 8 KB 2.01-2.07, 16 KB 2.02-2.06, 32 KB
    // 2.04-2.10; rows in L2 unchanged.
    prefetch_stream(p, 192);
    const PairLookups cur = next;
    if (sb + 2 < nsb) next = lookup_pair(c, p + 2 * kB, sb + 3 < nsb);
    __m512i W[2][4];
    const __m512i nib = expand_pair(c, cur, W);
    // dw of block b of super-block h at dword 2b + h: d * (0.5 + scale nibble) / 4
    const uint32_t dd = load_u16(p) | (two ? static_cast<uint32_t>(load_u16(p + kB)) << 16 : 0u);
    const __m128 d01 = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(dd)));
    const __m512 d = _mm512_permutexvar_ps(alt, _mm512_castps128_ps512(d01));
    const __m512 dw = _mm512_mul_ps(_mm512_permutexvar_ps(nib, c.quarter), d);
#pragma GCC unroll 3
    for (int t = 0; t < T; ++t) {
      const int8_t* x = xe + (t * nsb + sb) * 256;
      const __m512i P0 = sb_dot(W[0], x);
      const __m512i P1 = two ? sb_dot(W[1], x + 256) : _mm512_setzero_si512();
      // dword 2b + h <- the sum of dwords 2b, 2b + 1 of super-block h's dot (two
      // in-lane swaps: cheaper than two cross-lane dword permutes)
      const __m512i S = _mm512_add_epi32(_mm512_mask_shuffle_epi32(P0, 0xAAAA, P1, _MM_PERM_CDAB),
                                         _mm512_mask_shuffle_epi32(P1, 0x5555, P0, _MM_PERM_CDAB));
      const float* k = dk + t * 2 * a.nbr + 16 * sb;  // sb = 2s'
      const __m512 DX = _mm512_load_ps(k), KC = _mm512_load_ps(k + 16);
      acc[t] = _mm512_fmadd_ps(_mm512_fmsub_ps(_mm512_cvtepi32_ps(S), DX, KC), dw, acc[t]);
    }
  }
#pragma GCC unroll 3
  for (int t = 0; t < T; ++t) Y[t * ldy + r] = _mm512_reduce_add_ps(acc[t]);
}

}  // namespace

void pack_iq2xxs_lane_avx512(const uint8_t* p, uint8_t* out) {
  const Consts c;  // per call: a function-local static would add a guard (and a weak symbol)
  __m512i W[2][4];
  const __m512i nib = expand_pair(c, lookup_pair(c, p, true), W);
  // lane vector 2i + h, dword j: elements 8i + 4h .. 8i + 4h + 3 of block j % 8 of
  // super-block j / 8 = dword h of qword j % 8 of W[j / 8][i]
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    _mm512_storeu_si512(out + 128 * i, _mm512_permutex2var_epi32(W[0][i], even, W[1][i]));
    _mm512_storeu_si512(out + 128 * i + 64, _mm512_permutex2var_epi32(W[0][i], odd, W[1][i]));
  }
  // dw of block j: d * (0.5 + scale nibble) / 4 (the nibble of block b of super-block h
  // is at dword 2b + h)
  constexpr size_t kB = sizeof(BlockIQ2_XXS);
  const __m512i by_block = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  const __m512 d = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(_cvtsh_ss(load_u16(p))),
                                        _mm512_set1_ps(_cvtsh_ss(load_u16(p + kB))));
  _mm512_storeu_ps(out + 512, _mm512_mul_ps(d, _mm512_permutexvar_ps(_mm512_permutexvar_epi32(by_block, nib), c.quarter)));
}

void gemv_iq2xxs_avx512(const WeightMatrix& W, const ActQ& act, int64_t n_tokens, float* Y,
                        int64_t ldy, int64_t r0, int64_t r1) {
  const Consts c;
  const int64_t nsb = act.nb / 8;
  const size_t xbytes = static_cast<size_t>(n_tokens * nsb * 256);
  uint8_t* buf = scratch_bytes(xbytes + static_cast<size_t>(n_tokens * 2 * act.nbr) * sizeof(float));
  int8_t* xe = reinterpret_cast<int8_t*>(buf);
  float* dk = reinterpret_cast<float*>(buf + xbytes);
  entry_layout(act, n_tokens, xe, dk);
  gemv_rows_by_tokens(r0, r1, n_tokens, [&](auto T, int64_t r, int64_t t0) {
    gemv_row<decltype(T)::value>(c, W.row(r), act, xe + t0 * nsb * 256, dk + t0 * 2 * act.nbr, Y + t0 * ldy,
                                 ldy, r);
  });
}

}  // namespace qk
}  // namespace pyv4
