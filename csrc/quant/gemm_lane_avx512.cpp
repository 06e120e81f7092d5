// AVX-512 + VNNI prefill GEMM for the integer weight types (Q8_0, Q4_0, IQ4_NL, Q4_K,
// MXFP4, and the super-block types Q2_K, Q3_K, IQ2_XXS, IQ4_XS, IQ3_XXS, IQ2_XS,
// IQ1_S, IQ1_M, IQ3_S, IQ2_S, Q5_K, Q6_K) in the "lane"
// layout of quant/kernels.h: one int32 lane per 32-block.
//
// Blocks go in groups of 16. In a group, zmm k (k = 0..7) holds, in dword lane j,
// elements 4k..4k+3 of block j (weights as unsigned codes, activations as int8).
// Eight chained vpdpbusd then leave the exact 32-element dot of block j in lane j,
// so the float step runs once per 16 blocks (8 vpdpbusd):
//   P  = sum_k vpdpbusd(W_k, X_k)               16 int32 lanes, one per block
//   F += dw * (dx * float(P) - cs)              cs = k * dx * sum(q)  (code offset k)
//   (Q4_K: F += dw * dx * float(P) - mw * cs,   cs = dx * sum(q), mw = dmin * m;
//    Q2_K: F += dw * dx * float(P) + mn . hs,   mins per 16-element sub-block, see Form)
// dw/mw are 16 floats per group and dx/cs 16 floats per token and group: all
// dense, no broadcasts or permutes in the inner loop.
//
// The weights are repacked ("panel"): per thread, rows are decoded once into a
// thread-local buffer (codes + dw + mw, 640 bytes per row and group) and then
// multiplied with every token, in register tiles of kR rows x kT tokens (kR*kT
// int32 accumulators in registers, the float ones in L1, updated once per 16
// blocks); the cache policy is in quant/lane_drive.h. Measured at 128 tokens, 1 thread:
// Zen 4 guest ~245 Gops/s (its vpdpbusd issue limit). Zen 5 guest, the 4x4
// tile alone over 8 groups: ~640, 62 % of its 1,040. The float step (cvt + 2
// FMA per 8 vpdpbusd, probably on the pipes that issue vpdpbusd) is the main
// cost: an asm version of the loop without it ran ~750, a bare vpdpbusd loop
// with the same loads ~960. Packing adds ~10 % at 128 tokens (a Q8_0 group
// ~23 ns, a split MXFP4 group ~11 ns) and dominates at ~12 tokens. The super-
// block packers (1 thread, L2-resident, from 4-token runs): Q2_K / IQ4_XS ~25 ns
// a group, Q3_K ~37, IQ2_XXS ~50 (its 8 grid gathers; scalar table loads
// instead measured 10-30 % slower). Where the CPU has VBMI + GFNI, IQ2_XXS packs
// by its GEMV's decode instead (PackIQ2_XXS_Vbmi; Zen 4, [2048x4096], 2 threads,
// Gops/s: 16 tokens 349-362 -> 477-485, 32: 456-459 -> 538, 128: 560-571 -> 578-585).
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "quant/blocks.h"
#include "quant/iq1s_grid.h"  // the grids of lane_pack_iq.h (included in the namespace below)
#include "quant/iq2s_grid.h"
#include "quant/iq2xs_grid.h"
#include "quant/iq2xxs_grid.h"
#include "quant/iq3s_grid.h"
#include "quant/iq3xxs_grid.h"
#include "quant/kernels.h"
#include "quant/lane_drive.h"
#include "quant/simd_avx512.h"  // with_parity, iq_signed
#include "quant/split_layout.h"

namespace pyv4 {
namespace qk {
namespace {

using namespace qblocks;

// How a packed group's floats enter the sums (the "F +=" step of the header):
//   Offset:  F += dw * (dx * P - cs)                 codes with an offset k (cs = k dx sum q)
//   Min:     F += dw * dx * P - mw * cs              Q4_K (cs = dx sum q)
//   HalfMin: F += dw * dx * P + mn0 * h0 + mn1 * h1  Q2_K: mins per 16-element sub-block
//            (mn = -dmin * m of the group's 32 sub-blocks, h = ActQ::hs of the same)
//   HalfScale: as HalfMin with a dw per 16-element half of each block (IQ2_XS,
//            whose sub-block scales do not fit a code byte): P of dwords 0..3 (the
//            first halves) takes dw0 in a float step of its own, dwords 4..7 dw1
enum class Form { Offset, Min, HalfMin, HalfScale };
// Packed bytes per row and group: codes 512, dw 64, then mw 64 (Min; unused by
// Offset) or mn0, mn1 128 (HalfMin; HalfScale then dw1 64).
constexpr int group_bytes(Form f) { return f == Form::HalfScale ? 768 : f == Form::HalfMin ? 704 : 640; }
constexpr bool half_sums(Form f) { return f == Form::HalfMin || f == Form::HalfScale; }
// The driver's constants (quant/lane_drive.h: LaneShape, with the cache policy).
constexpr int64_t kPanel = 16;
constexpr int64_t kSpanRows = 256;
constexpr size_t kXBlockBytes = 384 << 10;
constexpr int64_t kChunkGroups = 8;  // a 4-token tile's 16 KB
constexpr int kR = 4;         // register tile: rows
constexpr int kT = 4;         // register tile: tokens

// ---- 4x4 transpose of dwords across 16 blocks ----
// Z[a] holds blocks 4a..4a+3, block 4a+b in 128-bit lane b (dwords m = 0..3).
// Returns D[m]: dword lane j = 4a+b holds dword m of block j.
inline void transpose16(const __m512i (&Z)[4], __m512i (&D)[4]) {
  const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  __m512i Zp[4];
  for (int a = 0; a < 4; ++a) Zp[a] = _mm512_permutexvar_epi32(idx, Z[a]);
  const __m512i T0 = _mm512_shuffle_i32x4(Zp[0], Zp[1], _MM_SHUFFLE(1, 0, 1, 0));
  const __m512i T1 = _mm512_shuffle_i32x4(Zp[0], Zp[1], _MM_SHUFFLE(3, 2, 3, 2));
  const __m512i T2 = _mm512_shuffle_i32x4(Zp[2], Zp[3], _MM_SHUFFLE(1, 0, 1, 0));
  const __m512i T3 = _mm512_shuffle_i32x4(Zp[2], Zp[3], _MM_SHUFFLE(3, 2, 3, 2));
  D[0] = _mm512_shuffle_i32x4(T0, T2, _MM_SHUFFLE(2, 0, 2, 0));
  D[1] = _mm512_shuffle_i32x4(T0, T2, _MM_SHUFFLE(3, 1, 3, 1));
  D[2] = _mm512_shuffle_i32x4(T1, T3, _MM_SHUFFLE(2, 0, 2, 0));
  D[3] = _mm512_shuffle_i32x4(T1, T3, _MM_SHUFFLE(3, 1, 3, 1));
}

// 16 bytes at p + off + j*bb for blocks j = 0..15, transposed (see transpose16).
inline void load_t16(const uint8_t* p, int bb, int off, __m512i (&D)[4]) {
  __m512i Z[4];
  for (int a = 0; a < 4; ++a) {
    const uint8_t* q = p + off + 4 * a * bb;
    __m512i z = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
    z = _mm512_inserti32x4(z, _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + bb)), 1);
    z = _mm512_inserti32x4(z, _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 2 * bb)), 2);
    Z[a] = _mm512_inserti32x4(z, _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 3 * bb)), 3);
  }
  transpose16(Z, D);
}

// The same for 16 contiguous 16-byte blocks (split rows): four plain loads.
inline void load_t16(const uint8_t* p, __m512i (&D)[4]) {
  __m512i Z[4];
  for (int a = 0; a < 4; ++a) Z[a] = _mm512_loadu_si512(p + 64 * a);
  transpose16(Z, D);
}

// The dword at p + j*bb for j = 0..15 (all inside the 16 blocks). Scalar loads:
// cheaper than vpgatherdd on Zen 4.
inline __m512i head16(const uint8_t* p, int bb) {
  alignas(64) uint32_t v[16];
  for (int j = 0; j < 16; ++j) std::memcpy(&v[j], p + j * bb, 4);
  return _mm512_load_si512(v);
}

inline __m512 f16_head16(const uint8_t* p, int bb) {
  alignas(32) uint16_t v[16];
  for (int j = 0; j < 16; ++j) v[j] = load_u16(p + j * bb);
  return _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(v)));
}

inline void store_codes(uint8_t* out, int k, __m512i v) {
  _mm512_storeu_si512(out + 64 * k, v);
}

// ---- group packers: 16 blocks at p -> out[0..512) codes, [512..576) dw, [576..640) mw ----
struct PackQ8_0 {
  static constexpr int kBB = 34, kBlocks = 16;
  static constexpr Form kForm = Form::Offset;
  static constexpr GGMLType kType = GGMLType::Q8_0;
  static inline void group(const uint8_t* p, uint8_t* out) {
    const __m512i off = _mm512_set1_epi8(static_cast<char>(0x80));
    __m512i D[4];
    load_t16(p, 34, 2, D);
    for (int k = 0; k < 4; ++k) store_codes(out, k, _mm512_xor_si512(D[k], off));
    load_t16(p, 34, 18, D);
    for (int k = 0; k < 4; ++k) store_codes(out, 4 + k, _mm512_xor_si512(D[k], off));
    _mm512_storeu_ps(out + 512, f16_head16(p, 34));
  }
};
// The codes of 16 blocks of nibbles, transposed into D: the nibbles (Q4_0), or
// the non-linear levels + 128 (IQ4_NL, IQ4_XS: kLevels).
template <bool kLevels>
inline void nibble_codes(const __m512i (&D)[4], uint8_t* out) {
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  for (int k = 0; k < 4; ++k) {
    __m512i lo, hi;
    if constexpr (kLevels) {
      iq4nl_codes(D[k], &lo, &hi);
    } else {
      lo = _mm512_and_si512(D[k], m4);
      hi = _mm512_and_si512(_mm512_srli_epi16(D[k], 4), m4);
    }
    store_codes(out, k, lo);
    store_codes(out, 4 + k, hi);
  }
}
// Q4_0 and IQ4_NL (one block layout: f16 d, 16 bytes of nibbles; IQ4_NL's codes
// are its levels + 128, k = 128). The 4-bit packers also read split rows
// (quant/split_layout.h; Q4_0 and MXFP4): a group of 16 blocks lies in one chunk,
// its codes 256 contiguous bytes, its scales 16 or 32.
template <GGMLType kT>
struct PackNibbles18 {
  static constexpr int kBB = 18, kBlocks = 16;
  static constexpr Form kForm = Form::Offset;
  static constexpr GGMLType kType = kT;
  static inline void codes(const __m512i (&D)[4], uint8_t* out) { nibble_codes<kT == GGMLType::IQ4_NL>(D, out); }
  static inline void group(const uint8_t* p, uint8_t* out) {
    __m512i D[4];
    load_t16(p, 18, 2, D);
    codes(D, out);
    _mm512_storeu_ps(out + 512, f16_head16(p, 18));
  }
  static inline void group_split(const uint8_t* c, const uint8_t* s, uint8_t* out) {
    __m512i D[4];
    load_t16(c, D);
    codes(D, out);
    _mm512_storeu_ps(out + 512,
                     _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s))));
  }
};
using PackQ4_0 = PackNibbles18<GGMLType::Q4_0>;
using PackIQ4_NL = PackNibbles18<GGMLType::IQ4_NL>;
struct PackMXFP4 {
  static constexpr int kBB = 17, kBlocks = 16;
  static constexpr Form kForm = Form::Offset;
  static constexpr GGMLType kType = GGMLType::MXFP4;
  static inline void codes(const __m512i (&D)[4], uint8_t* out) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i lut = _mm512_broadcast_i32x4(
        _mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0));  // 2*E2M1 + 12
    for (int k = 0; k < 4; ++k) {
      store_codes(out, k, _mm512_shuffle_epi8(lut, _mm512_and_si512(D[k], m4)));
      store_codes(out, 4 + k,
                  _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(D[k], 4), m4)));
    }
  }
  // e8m0_to_f32_half of 16 exponents: e < 2 -> 0x00200000 << e, else (e - 1) << 23
  static inline void scales(__m512i e, uint8_t* out) {
    const __m512i normal = _mm512_slli_epi32(_mm512_sub_epi32(e, _mm512_set1_epi32(1)), 23);
    const __m512i sub = _mm512_sllv_epi32(_mm512_set1_epi32(0x00200000), e);
    const __mmask16 small = _mm512_cmplt_epu32_mask(e, _mm512_set1_epi32(2));
    _mm512_storeu_si512(out + 512, _mm512_mask_blend_epi32(small, normal, sub));
  }
  static inline void group(const uint8_t* p, uint8_t* out) {
    __m512i D[4];
    load_t16(p, 17, 1, D);
    codes(D, out);
    scales(_mm512_and_si512(head16(p, 17), _mm512_set1_epi32(0xFF)), out);
  }
  static inline void group_split(const uint8_t* c, const uint8_t* s, uint8_t* out) {
    __m512i D[4];
    load_t16(c, D);
    codes(D, out);
    scales(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s))), out);
  }
};
// Q4_K: a group is two super-blocks (16 sub-blocks of 32). Sub-block j of a
// super-block is nibble (j & 1) of the 32-byte chunk j / 2, so element 4k+m of
// sub-block j is that nibble of chunk dword k. (Q5_K's 128 code bytes are laid
// out alike: Q4kNibbles and store_q4k_scales serve its packer too.)
struct Q4kNibbles {
  __m512i L0, H0, L1, H1;  // the 128 qs bytes of each super-block (at q0, q1)
  Q4kNibbles(const uint8_t* q0, const uint8_t* q1)
      : L0(_mm512_loadu_si512(q0)), H0(_mm512_loadu_si512(q0 + 64)),
        L1(_mm512_loadu_si512(q1)), H1(_mm512_loadu_si512(q1 + 64)) {}
  // The nibbles of dword k of every lane's 32-block.
  __m512i at(int k) const {
    const __m512i base = _mm512_setr_epi32(0, 0, 8, 8, 16, 16, 24, 24, 0, 0, 8, 8, 16, 16, 24, 24);
    const __m512i idx = _mm512_add_epi32(base, _mm512_set1_epi32(k));
    const __m512i A = _mm512_permutex2var_epi32(L0, idx, H0);
    const __m512i B = _mm512_permutex2var_epi32(L1, idx, H1);
    __m512i C = _mm512_mask_blend_epi32(0xFF00, A, B);
    C = _mm512_mask_srli_epi32(C, 0xAAAA, C, 4);
    return _mm512_and_si512(C, _mm512_set1_epi8(0x0F));
  }
};
// dw = d * sc and mw = dmin * m of the 16 lanes (the f16 d, dmin and 12 scale
// bytes at the start of each super-block p, p1) to out + 512 and out + 576.
inline void store_q4k_scales(const uint8_t* p, const uint8_t* p1, uint8_t* out) {
  uint64_t sc[2], mn[2];
  q4k_scales_mins(p + 4, &sc[0], &mn[0]);
  q4k_scales_mins(p1 + 4, &sc[1], &mn[1]);
  const __m512 scf = _mm512_cvtepi32_ps(
      _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc))));
  const __m512 mnf = _mm512_cvtepi32_ps(
      _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(mn))));
  const __m128 dd0 = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(
      load_u16(p) | (static_cast<uint32_t>(load_u16(p + 2)) << 16))));
  const __m128 dd1 = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(
      load_u16(p1) | (static_cast<uint32_t>(load_u16(p1 + 2)) << 16))));
  // [d0 x8, d1 x8] and [dmin0 x8, dmin1 x8]
  const __m512 d = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_broadcastss_ps(dd0)),
                                      _mm256_broadcastss_ps(dd1), 1);
  const __m512 dm = _mm512_insertf32x8(
      _mm512_castps256_ps512(_mm256_broadcastss_ps(_mm_movehdup_ps(dd0))),
      _mm256_broadcastss_ps(_mm_movehdup_ps(dd1)), 1);
  _mm512_storeu_ps(out + 512, _mm512_mul_ps(d, scf));
  _mm512_storeu_ps(out + 576, _mm512_mul_ps(dm, mnf));
}
struct PackQ4_K {
  static constexpr int kBB = 144, kBlocks = 2;
  static constexpr Form kForm = Form::Min;
  static constexpr GGMLType kType = GGMLType::Q4_K;
  static inline void group(const uint8_t* p, uint8_t* out) {
    const Q4kNibbles q(p + 16, p + 144 + 16);
    for (int k = 0; k < 8; ++k) store_codes(out, k, q.at(k));
    store_q4k_scales(p, p + 144, out);
  }
};

// ---- the super-block types Q2_K, Q3_K, IQ2_XXS, IQ4_XS (math in quant/kernels.h) ----
// A group is two super-blocks; lane j is 32-block j % 8 of super-block j / 8,
// so every code is decoded (and every sub-block scale folded in) once per row.

// x0 in lanes 0..7 (first super-block), x1 in lanes 8..15.
inline __m512i pair8(int32_t x0, int32_t x1) {
  return _mm512_mask_blend_epi32(0xFF00, _mm512_set1_epi32(x0), _mm512_set1_epi32(x1));
}
inline __m512 pair8_f16(const uint8_t* h0, const uint8_t* h1) {
  return _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(_cvtsh_ss(load_u16(h0))),
                              _mm512_set1_ps(_cvtsh_ss(load_u16(h1))));
}
// j % 8 in lane j.
inline __m512i lane_block() { return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7); }
// Per lane j, two bytes of a 16-byte array per super-block (s0 for lanes 0..7, s1
// for 8..15): byte 2 (j % 8) in bits 0..7, byte 2 (j % 8) + 1 in bits 8..15.
inline __m512i byte_pairs(__m128i s0, __m128i s1) {
  return _mm512_cvtepu16_epi32(_mm256_inserti128_si256(_mm256_castsi128_si256(s0), s1, 1));
}
// Q2_K / Q3_K (16 sub-blocks of 16): the 2-bit codes of dword k (elements
// 4k..4k+3) of every lane's 32-block. Block b = 4n + jj of a super-block takes
// bits 2jj of qs[32n .. 32n + 31] (quant/blocks.h), i.e. qs dword 8n + k.
// Q0 / Q1: the 64 qs bytes of the two super-blocks.
inline __m512i k_low2(__m512i Q0, __m512i Q1, int k) {
  const __m512i base = _mm512_setr_epi32(0, 0, 0, 0, 8, 8, 8, 8, 16, 16, 16, 16, 24, 24, 24, 24);
  const __m512i sh = _mm512_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6, 0, 2, 4, 6, 0, 2, 4, 6);
  const __m512i v = _mm512_permutex2var_epi32(Q0, _mm512_add_epi32(base, _mm512_set1_epi32(k)), Q1);
  return _mm512_and_si512(_mm512_srlv_epi32(v, sh), _mm512_set1_epi8(3));
}
// Dwords k < 4 of a 32-block are its sub-block 2b, k >= 4 sub-block 2b + 1.
// Q2_K: u = a_s * c (0..45, exact in the 16-bit multiply: a byte's product
// never carries into the next), dw = d; the mins, -dmin * m_s per sub-block,
// go to mn0 / mn1 (Form::HalfMin, in the order of ActQ::hs).
struct PackQ2_K {
  static constexpr int kBB = 84, kBlocks = 2;
  static constexpr Form kForm = Form::HalfMin;
  static constexpr GGMLType kType = GGMLType::Q2_K;
  static inline void group(const uint8_t* p, uint8_t* out) {
    const uint8_t* p1 = p + kBB;
    const __m128i s0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i s1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p1));
    const __m512i E = byte_pairs(s0, s1), m4 = _mm512_set1_epi32(15);
    __m512i a[2] = {_mm512_and_si512(E, m4), _mm512_and_si512(_mm512_srli_epi32(E, 8), m4)};
    for (auto& v : a) v = _mm512_or_si512(v, _mm512_slli_epi32(v, 16));  // both 16-bit words
    const __m512i Q0 = _mm512_loadu_si512(p + 16), Q1 = _mm512_loadu_si512(p1 + 16);
    for (int k = 0; k < 8; ++k) store_codes(out, k, _mm512_mullo_epi16(k_low2(Q0, Q1, k), a[k / 4]));
    _mm512_storeu_ps(out + 512, pair8_f16(p + 80, p1 + 80));
    const __m128i n4 = _mm_set1_epi8(0x0F);
    for (int h = 0; h < 2; ++h) {
      const uint8_t* q = h ? p1 : p;
      const __m512 m = _mm512_cvtepi32_ps(
          _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(h ? s1 : s0, 4), n4)));
      _mm512_storeu_ps(out + 576 + 64 * h, _mm512_mul_ps(_mm512_set1_ps(-_cvtsh_ss(load_u16(q + 82))), m));
    }
  }
};
// Q3_K: w = d * a * (c - 4) with a = scale - 32 in [-32, 31] and c in [0, 7],
// so u = a * (c - 4) + 124 lies in [0, 252]: one code byte, dw = d, offset
// k = 124 through cs (Form::Offset). The byte products are formed mod 256 (a
// 16-bit multiply per byte position) and are exact since u fits a byte.
struct PackQ3_K {
  static constexpr int kBB = 110, kBlocks = 2;
  static constexpr Form kForm = Form::Offset;
  static constexpr GGMLType kType = GGMLType::Q3_K;
  static inline void group(const uint8_t* p, uint8_t* out) {
    const uint8_t* p1 = p + kBB;
    uint64_t lo0, hi0, lo1, hi1;
    q3k_scales(p + 96, &lo0, &hi0);
    q3k_scales(p1 + 96, &lo1, &hi1);
    const __m512i E = byte_pairs(_mm_set_epi64x(static_cast<long long>(hi0), static_cast<long long>(lo0)),
                                 _mm_set_epi64x(static_cast<long long>(hi1), static_cast<long long>(lo1)));
    __m512i A[2], B[2];
    for (int h = 0; h < 2; ++h) {
      const __m512i a = _mm512_sub_epi32(_mm512_and_si512(h ? _mm512_srli_epi32(E, 8) : E,
                                                          _mm512_set1_epi32(0xFF)),
                                         _mm512_set1_epi32(32));
      A[h] = _mm512_or_si512(_mm512_and_si512(a, _mm512_set1_epi32(0xFFFF)), _mm512_slli_epi32(a, 16));
      const __m512i bias = _mm512_and_si512(_mm512_sub_epi32(_mm512_set1_epi32(124), _mm512_slli_epi32(a, 2)),
                                            _mm512_set1_epi32(0xFF));
      B[h] = _mm512_mullo_epi32(bias, _mm512_set1_epi32(0x01010101));
    }
    const __m512i Q0 = _mm512_loadu_si512(p + 32), Q1 = _mm512_loadu_si512(p1 + 32);
    // hmask dword k of each super-block; lane j's high bits at bit j % 8 of every byte
    const __m512i H = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))),
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p1)), 1);
    const __m512i hbase = pair8(0, 8), odd = _mm512_set1_epi16(static_cast<short>(0xFF00));
    for (int k = 0; k < 8; ++k) {
      const __m512i hb = _mm512_and_si512(
          _mm512_srlv_epi32(_mm512_permutexvar_epi32(_mm512_add_epi32(hbase, _mm512_set1_epi32(k)), H),
                            lane_block()),
          _mm512_set1_epi8(1));
      const __m512i c = _mm512_or_si512(k_low2(Q0, Q1, k), _mm512_slli_epi32(hb, 2));
      const __m512i lo = _mm512_mullo_epi16(c, A[k / 4]);
      const __m512i hi = _mm512_mullo_epi16(_mm512_and_si512(c, odd), A[k / 4]);
      const __m512i ac = _mm512_mask_blend_epi8(0xAAAAAAAAAAAAAAAAull, lo, hi);
      store_codes(out, k, _mm512_add_epi8(ac, B[k / 4]));
    }
    _mm512_storeu_ps(out + 512, pair8_f16(p + 108, p1 + 108));
  }
};
// IQ4_XS: block b's 16 bytes hold elements j (low nibble) and j + 16 (high), as
// Q4_0; u = level + 128 (1..241), dw = d * (ls - 32), offset k = 128.
struct PackIQ4_XS {
  static constexpr int kBB = 136, kBlocks = 2;
  static constexpr Form kForm = Form::Offset;
  static constexpr GGMLType kType = GGMLType::IQ4_XS;
  static inline void group(const uint8_t* p, uint8_t* out) {
    const uint8_t* p1 = p + kBB;
    const __m512i Z[4] = {_mm512_loadu_si512(p + 8), _mm512_loadu_si512(p + 72),
                          _mm512_loadu_si512(p1 + 8), _mm512_loadu_si512(p1 + 72)};
    __m512i D[4];
    transpose16(Z, D);
    nibble_codes<true>(D, out);
    // ls of block b: nibble b of scales_l (dword at +4), 2 bits 2b of scales_h (+2)
    uint32_t l0, l1;
    std::memcpy(&l0, p + 4, 4);
    std::memcpy(&l1, p1 + 4, 4);
    const __m512i jb = lane_block();
    const __m512i lo = _mm512_and_si512(
        _mm512_srlv_epi32(pair8(static_cast<int32_t>(l0), static_cast<int32_t>(l1)), _mm512_slli_epi32(jb, 2)),
        _mm512_set1_epi32(15));
    const __m512i hi = _mm512_and_si512(
        _mm512_srlv_epi32(pair8(load_u16(p + 2), load_u16(p1 + 2)), _mm512_slli_epi32(jb, 1)),
        _mm512_set1_epi32(3));
    const __m512i ls = _mm512_sub_epi32(_mm512_or_si512(lo, _mm512_slli_epi32(hi, 4)), _mm512_set1_epi32(32));
    _mm512_storeu_ps(out + 512, _mm512_mul_ps(pair8_f16(p, p1), _mm512_cvtepi32_ps(ls)));
  }
};
// The i-quant packers (IQ2_XXS, IQ3_XXS, IQ2_XS, IQ1_S, IQ1_M, IQ3_S, IQ2_S).
#include "quant/lane_pack_iq.h"
// Q5_K's and Q6_K's.
#include "quant/lane_pack_k.h"

// Packs groups [0, ng) of one weight row. The last group may be partial: its
// blocks are copied into a zeroed buffer first (zero scales, zero codes there;
// the padded activations are zero too).
// A split row (4-bit packers; whole groups: split rows have cols % 512 == 0).
template <class Pk>
void pack_split_row(const uint8_t* row, int64_t ng, uint8_t* out) {
  for (int64_t g = 0; g < ng; ++g)
    Pk::group_split(split::block_codes(Pk::kType, row, 16 * g),
                    split::block_scale(Pk::kType, row, 16 * g), out + g * group_bytes(Pk::kForm));
}

template <class Pk>
void pack_row(const uint8_t* row, int64_t nblk, int64_t ng, uint8_t* out) {
  const int64_t full = nblk / Pk::kBlocks;
  for (int64_t g = 0; g < full; ++g) Pk::group(row + g * Pk::kBlocks * Pk::kBB, out + g * group_bytes(Pk::kForm));
  if (full < ng) {
    alignas(64) uint8_t tmp[Pk::kBlocks * Pk::kBB];
    std::memset(tmp, 0, sizeof(tmp));
    std::memcpy(tmp, row + full * Pk::kBlocks * Pk::kBB,
                static_cast<size_t>(nblk - full * Pk::kBlocks) * Pk::kBB);
    Pk::group(tmp, out + full * group_bytes(Pk::kForm));
  }
}

// Y[t * ldy + i] = sum of the 16 lanes of F[i][t] (with `add`, added to Y: a
// later column chunk of the same rows). One transpose-and-add tree
// (15 adds) leaves the 16 sums in one vector, lane 4t + i, instead of 16
// separate reductions: with 8 groups per row (4096 columns) the tile's
// epilogue was ~10 % of its time.
template <int R, int T>
inline void store_sums(const float (&F)[R][T][16], float* Y, int64_t ldy, bool add) {
  __m512 v[16];
#pragma GCC unroll 16
  for (int p = 0; p < 16; ++p)
    v[p] = (p % 4 < R && p / 4 < T) ? _mm512_load_ps(F[p % 4][p / 4]) : _mm512_setzero_ps();
  __m512 w[8];  // 128-bit lane: partial sums of v[2q], v[2q+1] interleaved
#pragma GCC unroll 8
  for (int q = 0; q < 8; ++q)
    w[q] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * q], v[2 * q + 1]),
                         _mm512_unpackhi_ps(v[2 * q], v[2 * q + 1]));
  __m512 x[4];  // 128-bit lane: partial sums of v[4q..4q+3]
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    const __m512d a = _mm512_castps_pd(w[2 * q]), b = _mm512_castps_pd(w[2 * q + 1]);
    x[q] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  __m512 y[2];  // 128-bit lanes 0-1: halves of the sums of v[8q..8q+3], lanes 2-3: v[8q+4..8q+7]
#pragma GCC unroll 2
  for (int q = 0; q < 2; ++q)
    y[q] = _mm512_add_ps(_mm512_shuffle_f32x4(x[2 * q], x[2 * q + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(x[2 * q], x[2 * q + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  alignas(64) float sums[16];
  _mm512_store_ps(sums, _mm512_add_ps(_mm512_shuffle_f32x4(y[0], y[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                      _mm512_shuffle_f32x4(y[0], y[1], _MM_SHUFFLE(3, 1, 3, 1))));
#pragma GCC unroll 4
  for (int t = 0; t < T; ++t)
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) Y[t * ldy + i] = add ? Y[t * ldy + i] + sums[4 * t + i] : sums[4 * t + i];
}

template <int R, int T, Form kForm>
void micro(const uint8_t* pw, size_t ps, const ActQ& a, int64_t t0, int64_t g0, int64_t g1,
           float* Y, int64_t ldy, int64_t r) {
  // Float accumulators live in L1 (touched once per 16 blocks); the registers
  // hold the R*T int32 accumulators and the R weight vectors of one k step.
  alignas(64) float F[R][T][16];
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) _mm512_store_ps(F[i][t], _mm512_setzero_ps());
  // One base pointer per activation array and the tokens at a fixed stride:
  // fewer live pointers than one per token (the 4x4 tile spilled them; 3-5 %).
  const int8_t* xq = a.q(t0);
  const float* xd = a.d(t0);
  const float* xc = a.c(t0);
  const float* xh = half_sums(kForm) ? a.h(t0) : nullptr;
  const int64_t sq = a.nb_pad * 32, sf = a.nb_pad, sh = 2 * a.nb_pad;
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* wg = pw + g * group_bytes(kForm);
    __m512i P[R][T];
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) P[i][t] = _mm512_setzero_si512();
#pragma GCC unroll 8
    for (int k = 0; k < 8; ++k) {
      __m512i Wv[R];
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) {
        Wv[i] = _mm512_load_si512(wg + i * ps + 64 * k);
        // Opaque to GCC from here: under the tile's register pressure it would
        // otherwise re-load each weight vector for every token (4x the loads;
        // pinned, the micro-kernel ran ~10 % faster).
        __asm__("" : "+v"(Wv[i]));
      }
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) {
        const __m512i X = _mm512_loadu_si512(xq + t * sq + g * 512 + 64 * k);
#pragma GCC unroll 4
        for (int i = 0; i < R; ++i) P[i][t] = _mm512_dpbusd_epi32(P[i][t], Wv[i], X);
      }
      if constexpr (kForm == Form::HalfScale) {
        if (k == 3) {  // the first halves are summed: their dw0, then the sums restart
#pragma GCC unroll 4
          for (int t = 0; t < T; ++t) {
            const __m512 DX = _mm512_loadu_ps(xd + t * sf + 16 * g);
#pragma GCC unroll 4
            for (int i = 0; i < R; ++i) {
              const __m512 DW0 = _mm512_load_ps(reinterpret_cast<const float*>(wg + i * ps + 512));
              _mm512_store_ps(F[i][t], _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(P[i][t]), DX), DW0,
                                                       _mm512_load_ps(F[i][t])));
              P[i][t] = _mm512_setzero_si512();
            }
          }
        }
      }
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      const __m512 DX = _mm512_loadu_ps(xd + t * sf + 16 * g);
      __m512 KC, H0, H1;
      if constexpr (half_sums(kForm)) {
        H0 = _mm512_loadu_ps(xh + t * sh + 32 * g);
        H1 = _mm512_loadu_ps(xh + t * sh + 32 * g + 16);
      } else {
        KC = _mm512_loadu_ps(xc + t * sf + 16 * g);
      }
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) {
        const __m512 f = _mm512_cvtepi32_ps(P[i][t]);
        const float* fw = reinterpret_cast<const float*>(wg + i * ps + 512);
        const __m512 DW = _mm512_load_ps(kForm == Form::HalfScale ? fw + 48 : fw);  // HalfScale: dw1
        __m512 acc = _mm512_load_ps(F[i][t]);
        if constexpr (kForm == Form::Min) {
          acc = _mm512_fmadd_ps(_mm512_mul_ps(f, DX), DW, acc);
          acc = _mm512_fnmadd_ps(_mm512_load_ps(fw + 16), KC, acc);
        } else if constexpr (half_sums(kForm)) {
          acc = _mm512_fmadd_ps(_mm512_mul_ps(f, DX), DW, acc);
          acc = _mm512_fmadd_ps(_mm512_load_ps(fw + 16), H0, acc);
          acc = _mm512_fmadd_ps(_mm512_load_ps(fw + 32), H1, acc);
        } else {
          acc = _mm512_fmadd_ps(_mm512_fmsub_ps(f, DX, KC), DW, acc);
        }
        _mm512_store_ps(F[i][t], acc);
      }
    }
  }
  store_sums<R, T>(F, Y + t0 * ldy + r, ldy, g0 > 0);
}

template <Form kForm, int R>
void micro_t(int tt, const uint8_t* pw, size_t ps, const ActQ& a, int64_t t0, int64_t g0,
             int64_t g1, float* Y, int64_t ldy, int64_t r) {
  static_assert(kT <= 4, "token tile");
  switch (tt) {
    case 4: micro<R, (kT >= 4 ? 4 : 1), kForm>(pw, ps, a, t0, g0, g1, Y, ldy, r); break;
    case 3: micro<R, 3, kForm>(pw, ps, a, t0, g0, g1, Y, ldy, r); break;
    case 2: micro<R, 2, kForm>(pw, ps, a, t0, g0, g1, Y, ldy, r); break;
    default: micro<R, 1, kForm>(pw, ps, a, t0, g0, g1, Y, ldy, r); break;
  }
}

template <class Pk>
void gemm_lane(const WeightMatrix& W, const ActQ& a, int64_t n_tokens, float* Y, int64_t ldy,
               int64_t r0, int64_t r1) {
  static_assert(kR == 4, "row tile");
  const int64_t nblk = W.cols / (Pk::kBlocks == 2 ? 256 : 32);  // packer blocks per row
  const int64_t ng = a.nb_pad / 16;
  const size_t ps = static_cast<size_t>(ng) * group_bytes(Pk::kForm);
  const LaneShape shape{kPanel, kSpanRows, kXBlockBytes, kChunkGroups, kR, kT};
  lane_drive(
      shape, W, n_tokens, r0, r1, ng, ps, static_cast<size_t>(a.nb_pad) * 32,
      [&](int64_t r, uint8_t* out) {
        if constexpr (split::scale_bytes(Pk::kType) > 0) {  // a type with a split form
          if (W.split) return pack_split_row<Pk>(W.row(r), ng, out);
        }
        pack_row<Pk>(W.row(r), nblk, ng, out);
      },
      [&](int rows, int tt, const uint8_t* pw, int64_t t, int64_t g0, int64_t g1, int64_t r) {
        switch (rows) {
          case 4: micro_t<Pk::kForm, 4>(tt, pw, ps, a, t, g0, g1, Y, ldy, r); break;
          case 3: micro_t<Pk::kForm, 3>(tt, pw, ps, a, t, g0, g1, Y, ldy, r); break;
          case 2: micro_t<Pk::kForm, 2>(tt, pw, ps, a, t, g0, g1, Y, ldy, r); break;
          default: micro_t<Pk::kForm, 1>(tt, pw, ps, a, t, g0, g1, Y, ldy, r); break;
        }
      });
}

}  // namespace

bool lane_cscale_avx512(GGMLType t, float* cscale) {
  switch (t) {
    case GGMLType::Q8_0: *cscale = 128.0f; return true;  // codes w + 128
    case GGMLType::Q4_0: *cscale = 8.0f; return true;    // nibble, k = 8
    case GGMLType::IQ4_NL: *cscale = 128.0f; return true;  // level + 128
    case GGMLType::MXFP4: *cscale = 12.0f; return true;  // 2*E2M1 + 12
    case GGMLType::Q4_K: *cscale = 1.0f; return true;    // mins use dx*sum(q)
    case GGMLType::Q2_K: *cscale = 0.0f; return true;    // mins use ActQ::hs
    case GGMLType::Q3_K: *cscale = 124.0f; return true;  // a * (c - 4) + 124
    case GGMLType::IQ2_XXS: *cscale = 43.0f; return true;  // signed grid + 43
    case GGMLType::IQ4_XS: *cscale = 128.0f; return true;  // level + 128
    case GGMLType::IQ3_XXS:                                 // signed grid + 64
    case GGMLType::IQ1_S:                                   // 8 (grid + 1) +- 1 + 9
    case GGMLType::IQ3_S: *cscale = lowbit_offset(t); return true;  // signed grid + 16
    case GGMLType::IQ1_M:                                  // offsets use ActQ::hs
    case GGMLType::IQ2_XS:
    case GGMLType::IQ2_S: *cscale = 0.0f; return true;
    case GGMLType::Q5_K: *cscale = 1.0f; return true;  // mins use dx*sum(q), as Q4_K's
    case GGMLType::Q6_K: *cscale = 0.0f; return true;  // offsets use ActQ::hs
    default: return false;
  }
}

namespace {

// The packer that decodes by its type's GEMV lookups (Vbmi: compiled in that GEMV's file)
// where those may run (vbmi_kernels), the generic one elsewhere.
template <class Vbmi, class Generic>
void gemm_lane_by(const WeightMatrix& W, const ActQ& act, int64_t n_tokens, float* Y, int64_t ldy, int64_t r0,
                  int64_t r1) {
  if (vbmi_kernels(W.type))
    gemm_lane<Vbmi>(W, act, n_tokens, Y, ldy, r0, r1);
  else
    gemm_lane<Generic>(W, act, n_tokens, Y, ldy, r0, r1);
}

}  // namespace

void gemm_lane_avx512(const WeightMatrix& W, const ActQ& act, int64_t n_tokens, float* Y,
                      int64_t ldy, int64_t r0, int64_t r1) {
  switch (W.type) {
    case GGMLType::Q8_0: gemm_lane<PackQ8_0>(W, act, n_tokens, Y, ldy, r0, r1); return;
    case GGMLType::Q4_0: gemm_lane<PackQ4_0>(W, act, n_tokens, Y, ldy, r0, r1); return;
    case GGMLType::IQ4_NL: gemm_lane<PackIQ4_NL>(W, act, n_tokens, Y, ldy, r0, r1); return;
    case GGMLType::MXFP4: gemm_lane<PackMXFP4>(W, act, n_tokens, Y, ldy, r0, r1); return;
    case GGMLType::Q4_K: gemm_lane<PackQ4_K>(W, act, n_tokens, Y, ldy, r0, r1); return;
    case GGMLType::Q2_K: gemm_lane<PackQ2_K>(W, act, n_tokens, Y, ldy, r0, r1); return;
    case GGMLType::Q3_K: gemm_lane<PackQ3_K>(W, act, n_tokens, Y, ldy, r0, r1); return;
    case GGMLType::IQ2_XXS: gemm_lane_by<PackIQ2_XXS_Vbmi, PackIQ2_XXS>(W, act, n_tokens, Y, ldy, r0, r1); return;
    case GGMLType::IQ4_XS: gemm_lane<PackIQ4_XS>(W, act, n_tokens, Y, ldy, r0, r1); return;
    case GGMLType::IQ3_XXS: gemm_lane_by<PackIQ3_XXS_Vbmi, PackIQ3_XXS>(W, act, n_tokens, Y, ldy, r0, r1); return;
    case GGMLType::IQ1_S: gemm_lane<PackIQ1_S>(W, act, n_tokens, Y, ldy, r0, r1); return;
    case GGMLType::IQ1_M: gemm_lane<PackIQ1_M>(W, act, n_tokens, Y, ldy, r0, r1); return;
    case GGMLType::IQ2_XS: gemm_lane<PackIQ2_XS>(W, act, n_tokens, Y, ldy, r0, r1); return;
    case GGMLType::IQ3_S: gemm_lane<PackIQ3_S>(W, act, n_tokens, Y, ldy, r0, r1); return;
    case GGMLType::IQ2_S: gemm_lane<PackIQ2_S>(W, act, n_tokens, Y, ldy, r0, r1); return;
    case GGMLType::Q5_K: gemm_lane<PackQ5_K>(W, act, n_tokens, Y, ldy, r0, r1); return;
    case GGMLType::Q6_K: gemm_lane<PackQ6_K>(W, act, n_tokens, Y, ldy, r0, r1); return;
    default: return;
  }
}

}  // namespace qk
}  // namespace pyv4
