// AVX-512 (F/BW/VL/DQ) + VNNI kernels, called only when CPUID and XCR0 say the
// CPU and OS support them. Anonymous namespace: no ODR clash with the AVX2 file.
//
// Integer weight types use the quad activation layout of quant/kernels.h. A
// group of 4 weight blocks is decoded into two zmm of unsigned codes, A (elements
// 0..15 of each block) and B (elements 16..31), matching the activations, so
//   P  = vpdpbusd(vpdpbusd(0, A, xa), B, xb)   16 int32 lanes, 4 per block, exact
//   acc += dw * (dx * float(P) - cs)            dw, dx, cs spread to their 4 lanes;
//                                                cs = (k/4) * dx * sum(q)
// Codes: Q8_0 w+128 (k = 128), Q4_0 nibble (k = 8), IQ4_NL level+128 (k = 128), MXFP4
// 2*E2M1+12 (k = 12), Q4_K nibble with dw = d*sc and the mins subtracted once per
// super-block (acc -= sum_i dmin*m_i * dx_i*sum(q)_i). VNNI sums in int32: no saturation.
// Up to lane_min_tokens (quant/kernels.h): tiles of 4 rows x up to 4 tokens,
// each weight group decoded once per tile; or (1 token, and 2..8 tokens on short
// rows: gemm_avx512 says which) the GEMV (gemv_*): one row stream per thread, the
// exact int32 dot of each block formed first (superblock_dots) so the float step
// runs once per 16 blocks; for MXFP4 and Q4_0 software pipelined (gemv_pipelined: on
// Zen 4 this decode is bound by latency and op count, not by one port).
// MXFP4 and Q4_0 matrices in the split row layout (quant/split_layout.h; what
// a model loads on AVX-512) go through the same math on aligned loads
// (SplitSrc: gemv_split, and tile_int's groups), with the same results.
// From lane_min_tokens on: gemm_lane_avx512.cpp. Float weights: gemm_float_avx512.cpp.
#include <immintrin.h>

#include <cstring>
#include <type_traits>

#include "quant/blocks.h"
#include "quant/kernels.h"
#include "quant/simd_avx512.h"
#include "quant/split_layout.h"
#include "quant/tile_drive.h"

namespace pyv4 {
namespace qk {
namespace {

using namespace qblocks;

// Each GEMV thread streams one contiguous row range. Prefetching into L1 (T0)
// 4 KB ahead lost to the hardware prefetcher alone (head [129280x4096], 2
// threads: Q8_0 49 -> 60 GB/s, MXFP4 42 -> 34 of 35 GB/s measured when
// dropping it); gemv_int (Q8_0) prefetches into L2 (prefetch_stream) instead,
// which the hardware prefetcher does not reach: on a busy Zen 4 host
// (interleaved rounds, one thread, weight bytes per CPU-second, median of the
// paired ratios) [4096x8192] 1.36x, [32768x1024] 1.14x; 8 KB: 1.33x / 1.06x;
// 4 KB: 1.11x / 0.98x; T0 at 4 KB: 0.87x. gemv_split (MXFP4 / Q4_0) too: Intel Xeon
// (family 6 model 207), [2048x4096] from DRAM, 2 threads, ns per 256 weights: MXFP4
// 11.5-12.0 -> 6.7-7.8, Q4_0 12.1-14.0 -> 7.2-8.4 (~5 % slower on rows in L2).

inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

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

// The same order for 4 spread scales (lane L of DW[d] = scale of block L of group d).
inline __m512 order4(const __m512 (&DW)[4]) {
  const __m512 a = _mm512_unpacklo_ps(DW[0], DW[1]), b = _mm512_unpacklo_ps(DW[2], DW[3]);
  return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
}

// ---- group decoders: blocks 4g..4g+3 starting at p -> A, B codes and dw ----
// Word permutes (vpermw / vpermt2w, AVX512BW) gather the 16-byte code halves and
// the f16 scales of 4 blocks from two or four 64-byte loads, all inside the 4
// blocks (the tail group is decoded from a zero-padded copy).
struct DecQ8_0 {
  static constexpr GGMLType kType = GGMLType::Q8_0;
  static constexpr int kBB = 34;
  static inline __m512 scale(__m512 raw) { return raw; }  // already fp32
  // (Plain 16-byte loads: the word-permute variant streamed slower from DRAM.)
  static inline void group_raw(const uint8_t* p, __m512i* A, __m512i* B, __m512* DW) {
    const __m512i off = _mm512_set1_epi8(static_cast<char>(0x80));
    *DW = f16x4(p, 34);
    *A = _mm512_xor_si512(load4x16(p + 2, 34), off);
    *B = _mm512_xor_si512(load4x16(p + 18, 34), off);
  }
  static inline void group(const uint8_t* p, __m512i* A, __m512i* B, __m512* DW) {
    group_raw(p, A, B, DW);
  }
};
// Q4_0 and IQ4_NL: one block layout (f16 d, 16 bytes of nibbles); Q4_0's codes
// are the nibbles, IQ4_NL's its levels + 128.
template <GGMLType kT>
struct DecNibbles18 {
  static constexpr int kBB = 18;
  static inline __m512 scale(__m512 raw) { return raw; }  // already fp32
  // Two stages (gemv_pipelined overlaps them): fetch = loads, code permute,
  // scales; split = nibbles.
  static inline void fetch(const uint8_t* p, __m512i* Z, __m512* DW) {
    // out word 8b+m = word 1+9b+m of p: words < 32 from p, the rest from p + 8
    static const int16_t ic_w[32] = {1,  2,  3,  4,  5,  6,  7,  8,  10, 11, 12, 13, 14, 15, 16, 17,
                                     19, 20, 21, 22, 23, 24, 25, 26, 28, 29, 30, 31, 60, 61, 62, 63};
    const __m512i ic = _mm512_loadu_si512(ic_w);
    static const int16_t is_w[32] = {0, 0, 0, 0, 9, 9, 9, 9, 18, 18, 18, 18, 27, 27, 27, 27,
                                     0, 0, 0, 0, 0, 0, 0, 0, 0,  0,  0,  0,  0,  0,  0,  0};
    const __m512i is = _mm512_loadu_si512(is_w);
    const __m512i z0 = _mm512_loadu_si512(p), z1 = _mm512_loadu_si512(p + 8);
    *DW = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(is, z0)));
    *Z = _mm512_permutex2var_epi16(z0, ic, z1);
  }
  static inline void split(__m512i z, __m512i* A, __m512i* B) {
    if constexpr (kT == GGMLType::IQ4_NL) return iq4nl_codes(z, A, B);
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    *A = _mm512_and_si512(z, m4);
    *B = _mm512_and_si512(_mm512_srli_epi16(z, 4), m4);
  }
  // A super-group (4 groups from q) for gemv_pipelined: codes, and the raw
  // scales in the order of ActQ::dxr.
  static inline __m512 fetch4(const uint8_t* q, __m512i (&z)[4]) {
    __m512 DW[4];
#pragma GCC unroll 4
    for (int d = 0; d < 4; ++d) fetch(q + d * 4 * kBB, &z[d], &DW[d]);
    return order4(DW);
  }
  static inline void group_raw(const uint8_t* p, __m512i* A, __m512i* B, __m512* DW) {
    __m512i z;
    fetch(p, &z, DW);
    split(z, A, B);
  }
  static inline void group(const uint8_t* p, __m512i* A, __m512i* B, __m512* DW) {
    group_raw(p, A, B, DW);
  }
  // Split rows (Q4_0): f16 scales.
  static constexpr GGMLType kType = kT;
  static inline __m512 split_scales16(const uint8_t* s) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)));
  }
  static inline __m128 split_scales4(const uint8_t* s) {
    return _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(s)));
  }
};
using DecQ4_0 = DecNibbles18<GGMLType::Q4_0>;
using DecIQ4_NL = DecNibbles18<GGMLType::IQ4_NL>;
struct DecMXFP4 {
  static constexpr int kBB = 17;
  // e8m0_to_f32_half on the (integer) exponents: e < 2 -> 0x00200000 << e, else (e - 1) << 23
  static inline __m512 scale(__m512 raw) {
    const __m512i e = _mm512_castps_si512(raw);
    const __m512i normal = _mm512_slli_epi32(_mm512_sub_epi32(e, _mm512_set1_epi32(1)), 23);
    const __m512i sub = _mm512_sllv_epi32(_mm512_set1_epi32(0x00200000), e);
    const __mmask16 small = _mm512_cmplt_epu32_mask(e, _mm512_set1_epi32(2));
    return _mm512_castsi512_ps(_mm512_mask_blend_epi32(small, normal, sub));
  }
  // GEMV (gemv_pipelined): two loads per group, Za = bytes p-1 .. p+62 (byte p-1
  // masked off: a masked-off byte is never read, nor can it fault, even before the
  // start of a mapping) and Zb = p+4 .. p+67.
  // Codes of blocks 0 and 2 are word-aligned in Za (words 1.., 18..), those of
  // blocks 1 and 3 in Zb (words 7.., 24..); the exponent of block L is byte
  // 17L + 1 of Za, i.e. byte L + 1 of 128-bit lane L.
  static inline __m512i load_a(const uint8_t* p) {
    return _mm512_maskz_loadu_epi8(~1ull, reinterpret_cast<const void*>(
                                               reinterpret_cast<uintptr_t>(p) - 1));
  }
  static inline __m512i codes(__m512i za, const uint8_t* p) {
    static const int16_t ic_w[32] = {1, 2, 3, 4, 5, 6, 7, 8, 39, 40, 41, 42, 43, 44, 45, 46,
                                     18, 19, 20, 21, 22, 23, 24, 25, 56, 57, 58, 59, 60, 61,
                                     62, 63};
    return _mm512_permutex2var_epi16(za, _mm512_loadu_si512(ic_w), _mm512_loadu_si512(p + 4));
  }
  // vpshufb control moving byte L + 1 of lane L to the low byte of every dword
  // of lane L (zero above).
  static inline __m512i exp_ctl() {
    return _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(0x80808001u)),
                            _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3));
  }
  static inline void split(__m512i z, __m512i* A, __m512i* B) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i lut = _mm512_broadcast_i32x4(
        _mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0));  // 2*E2M1 + 12
    *A = _mm512_shuffle_epi8(lut, _mm512_and_si512(z, m4));
    *B = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(z, 4), m4));
  }
  // A super-group for gemv_pipelined: codes, and the exponents put straight
  // into the order of ActQ::dxr by masked vpshufb (dword d of lane L <- block L
  // of group d), so no order4.
  static inline __m512 fetch4(const uint8_t* q, __m512i (&z)[4]) {
    const __m512i ectl = exp_ctl();
    __m512i E = _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int d = 0; d < 4; ++d) {
      const uint8_t* p = q + d * 4 * kBB;
      const __m512i za = load_a(p);
      E = _mm512_mask_shuffle_epi8(E, 0x000F000F000F000Full << (4 * d), za, ectl);
      z[d] = codes(za, p);
    }
    return _mm512_castsi512_ps(E);
  }
  static inline void group(const uint8_t* p, __m512i* A, __m512i* B, __m512* DW) {
    group_raw(p, A, B, DW);
    *DW = scale(*DW);
  }
  // Split rows: the raw exponents, as integers in float lanes (scale converts).
  static constexpr GGMLType kType = GGMLType::MXFP4;
  static inline __m512 split_scales16(const uint8_t* s) {
    return _mm512_castsi512_ps(
        _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s))));
  }
  static inline __m128 split_scales4(const uint8_t* s) {
    uint32_t v;
    std::memcpy(&v, s, 4);
    return _mm_castsi128_ps(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(static_cast<int>(v))));
  }
  // Tiles (4+ tokens) and GEMV tails: three plain loads (the two-load form
  // above is slower in the tiles, 6.4 -> 7.0 ns per 128 weights at 4 tokens).
  static inline void group_raw(const uint8_t* p, __m512i* A, __m512i* B, __m512* DW) {
    // Codes of blocks 0 and 2 are word-aligned from p + 1 (words 0.., 17..), those
    // of blocks 1 and 3 from p + 4 (words 7.., 24..).
    static const int16_t ic_w[32] = {0, 1, 2, 3, 4, 5, 6, 7, 39, 40, 41, 42, 43, 44, 45, 46,
                                     17, 18, 19, 20, 21, 22, 23, 24, 56, 57, 58, 59, 60, 61,
                                     62, 63};
    const __m512i ic = _mm512_loadu_si512(ic_w);
    // Exponent of block L sits at byte L of 128-bit lane L (offsets 0, 17, 34, 51):
    // vpshufb moves it to the low byte of each dword of lane L (zero above).
    const __m512i ie = _mm512_set1_epi32(static_cast<int>(0x80808000u));
    const __m512i lane = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const __m512i e = _mm512_shuffle_epi8(_mm512_loadu_si512(p), _mm512_add_epi32(ie, lane));
    *DW = _mm512_castsi512_ps(e);  // raw exponents; scale() converts
    split(_mm512_permutex2var_epi16(_mm512_loadu_si512(p + 1), ic, _mm512_loadu_si512(p + 4)),
          A, B);
  }
};

// ---- where a row's quad groups come from ----
// GGML blocks (group g at byte 4 g kBB, a zero-padded tail group when the row's
// block count is not a multiple of 4), or split rows (quant/split_layout.h: a
// line of scales, then the codes, per chunk of 64 MXFP4 / 32 Q4_0 blocks; 64-byte
// aligned; whole 16-block super-groups, so no tail).
template <class Dec>
struct GgmlSrc {
  static constexpr bool kSplit = false;
  static inline void group(const uint8_t* row, int64_t g, __m512i* A, __m512i* B, __m512* DW) {
    Dec::group(row + g * 4 * Dec::kBB, A, B, DW);
  }
};
template <class Dec>
struct SplitSrc {
  static constexpr bool kSplit = true;
  // Codes A, B of the 4 blocks from b (one aligned 64-byte load).
  static inline void codes(const uint8_t* row, int64_t b, __m512i* A, __m512i* B) {
    Dec::split(_mm512_load_si512(split::block_codes(Dec::kType, row, b)), A, B);
  }
  static inline const uint8_t* scales(const uint8_t* row, int64_t b) {
    return split::block_scale(Dec::kType, row, b);
  }
  static inline void group(const uint8_t* row, int64_t g, __m512i* A, __m512i* B, __m512* DW) {
    codes(row, 4 * g, A, B);
    *DW = Dec::scale(spread4(Dec::split_scales4(scales(row, 4 * g))));
  }
  // The 16 raw scales of super-group s in the order of ActQ::dxr (dword 4L + d
  // = block 4d + L).
  static inline __m512 scales16(const uint8_t* row, int64_t s) {
    const __m512i dxr = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_permutexvar_ps(dxr, Dec::split_scales16(scales(row, 16 * s)));
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

template <class Dec, class Src, int R, int T>
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
      // (about the same place of the row in either layout)
      const uint8_t* p = rows[i] + g * 4 * Dec::kBB;
      for (int l = 0; l < 4 * Dec::kBB; l += 64) _mm_prefetch(reinterpret_cast<const char*>(p + ahead + l), _MM_HINT_T0);
      Src::group(rows[i], g, &A[i], &B[i], &DW[i]);
    }
    group_fma<R, T, true>(acc, A, B, DW, a, t0, g);
  }
  if (const int rem = static_cast<int>(a.nb - 4 * ng); rem && !Src::kSplit) {
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

// Exact int32 dots of quad group g (codes A: elements 0..15 of its 4 blocks,
// B: 16..31) with each token's activations, 4 lanes per block.
template <int T>
inline void group_dots(__m512i A, __m512i B, const ActQ& a, int64_t t0, int64_t g,
                       __m512i (&P)[T]) {
#pragma GCC unroll 4
  for (int t = 0; t < T; ++t) {
    const int8_t* xq = a.q(t0 + t) + 128 * g;
    P[t] = _mm512_dpbusd_epi32(
        _mm512_dpbusd_epi32(_mm512_setzero_si512(), A, _mm512_loadu_si512(xq)), B,
        _mm512_loadu_si512(xq + 64));
  }
}

// In-lane 4x4 dword transpose: dword d of 128-bit lane L of z[m] goes to
// dword m of lane L of z[d]. Applied to the codes of the 4 quad groups of a
// super-group (z[m] lane L = 16 code bytes of block 4m + L), z[d] then holds
// code dword d of all 16 blocks, block 4m + L at dword 4L + m: the order of
// ActQ::dxr.
inline void transpose4(__m512i (&z)[4]) {
  const __m512i t0 = _mm512_unpacklo_epi32(z[0], z[1]), t1 = _mm512_unpackhi_epi32(z[0], z[1]);
  const __m512i t2 = _mm512_unpacklo_epi32(z[2], z[3]), t3 = _mm512_unpackhi_epi32(z[2], z[3]);
  z[0] = _mm512_unpacklo_epi64(t0, t2);
  z[1] = _mm512_unpackhi_epi64(t0, t2);
  z[2] = _mm512_unpacklo_epi64(t1, t3);
  z[3] = _mm512_unpackhi_epi64(t1, t3);
}

// The quad activations of every token transposed the same way per super-group
// (what the GEMV multiplies the transposed codes with): token t's super-group
// s at xt + (t * nsg + s) * 512, the 4 vectors of elements 0..15 (transposed
// A halves), then the 4 of elements 16..31.
inline void transpose_act(const ActQ& a, int64_t n_tokens, int8_t* xt) {
  const int64_t nsg = a.nb / 16;
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int64_t s = 0; s < nsg; ++s) {
      const int8_t* q = a.q(t) + 512 * s;
      int8_t* o = xt + (t * nsg + s) * 512;
      __m512i xa[4], xb[4];
      for (int m = 0; m < 4; ++m) {
        xa[m] = _mm512_load_si512(q + 128 * m);
        xb[m] = _mm512_load_si512(q + 128 * m + 64);
      }
      transpose4(xa);
      transpose4(xb);
      for (int d = 0; d < 4; ++d) {
        _mm512_store_si512(o + 64 * d, xa[d]);
        _mm512_store_si512(o + 256 + 64 * d, xb[d]);
      }
    }
}

// Super-group s (16 blocks, the 4 quad groups' codes A[d], B[d]) of one row
// for each token: acc += (dx·dot - cs)·dw with dw = DWo (dxr order), each
// block's exact 32-element dot summed in int32 first. One token: 2 chained
// vpdpbusd per group, the 4 lanes of each block summed by reduce4. 2+ tokens:
// the codes transposed once (transpose4) against activations transposed once
// per call (transpose_act), so 4 + 4 chained vpdpbusd leave each block's dot
// in its own dword: the same integers and float operations (so the same bits)
// with 8 vector ops less per token and super-group. (For one token that
// saving is eaten by the transposes: MXFP4 0.93x.)
template <int T>
inline void superblock_dots(__m512i (&A)[4], __m512i (&B)[4], __m512 DWo, const ActQ& a,
                            const int8_t* xt, int64_t t0, int64_t s, __m512 (&acc)[T]) {
  if constexpr (T == 1) {
    __m512i P[4][1];
#pragma GCC unroll 4
    for (int d = 0; d < 4; ++d) group_dots<1>(A[d], B[d], a, t0, 4 * s + d, P[d]);
    const __m512 f = _mm512_cvtepi32_ps(reduce4(P[0][0], P[1][0], P[2][0], P[3][0]));
    const __m512 DX = _mm512_loadu_ps(a.dr(t0) + 16 * s);
    const __m512 KC = _mm512_loadu_ps(a.cr(t0) + 16 * s);
    acc[0] = _mm512_fmadd_ps(_mm512_fmsub_ps(f, DX, KC), DWo, acc[0]);
    return;
  }
  transpose4(A);
  transpose4(B);
  const int64_t nsg = a.nb / 16;
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
    const int8_t* x = xt + ((t0 + t) * nsg + s) * 512;
    __m512i pa = _mm512_dpbusd_epi32(_mm512_setzero_si512(), A[0], _mm512_load_si512(x));
    __m512i pb = _mm512_dpbusd_epi32(_mm512_setzero_si512(), B[0], _mm512_load_si512(x + 256));
#pragma GCC unroll 3
    for (int d = 1; d < 4; ++d) {
      pa = _mm512_dpbusd_epi32(pa, A[d], _mm512_load_si512(x + 64 * d));
      pb = _mm512_dpbusd_epi32(pb, B[d], _mm512_load_si512(x + 256 + 64 * d));
    }
    const __m512 f = _mm512_cvtepi32_ps(_mm512_add_epi32(pa, pb));
    const __m512 DX = _mm512_loadu_ps(a.dr(t0 + t) + 16 * s);
    const __m512 KC = _mm512_loadu_ps(a.cr(t0 + t) + 16 * s);
    acc[t] = _mm512_fmadd_ps(_mm512_fmsub_ps(f, DX, KC), DWo, acc[t]);
  }
}

// GEMV tail of one row: single 4-block groups g0..ng-1, then the 1..3 remaining
// blocks from a zero-padded copy.
template <class Dec, int T>
inline void gemv_tail(const uint8_t* row, const ActQ& a, int64_t t0, int64_t ng, int64_t g0,
                      __m512 (&acc)[T]) {
  constexpr int kGroupBytes = 4 * Dec::kBB;
  __m512 acc1[1][T];
  for (int t = 0; t < T; ++t) acc1[0][t] = acc[t];
  for (int64_t g = g0; g < ng; ++g) {
    __m512i A[1], B[1];
    __m512 DW[1];
    Dec::group(row + g * kGroupBytes, &A[0], &B[0], &DW[0]);
    group_fma<1, T, true>(acc1, A, B, DW, a, t0, g);
  }
  if (const int rem = static_cast<int>(a.nb - 4 * ng)) {
    alignas(64) uint8_t tmp[kGroupBytes];
    std::memset(tmp, 0, sizeof(tmp));
    std::memcpy(tmp, row + ng * kGroupBytes, static_cast<size_t>(rem) * Dec::kBB);
    __m512i A[1], B[1];
    __m512 DW[1];
    Dec::group(tmp, &A[0], &B[0], &DW[0]);
    group_fma<1, T, true>(acc1, A, B, DW, a, t0, ng);
  }
  for (int t = 0; t < T; ++t) acc[t] = acc1[0][t];
}

// GEMV, one row: 16 blocks (4 quad groups) per float step. Each block's int32
// dot is formed first (superblock_dots), so the convert + 2 FMAs run once per
// 16 blocks instead of once per 4.
template <class Dec, int T>
void gemv_int(const WeightMatrix& W, int64_t r, const ActQ& a, const int8_t* xt, int64_t t0,
              float* Y, int64_t ldy) {
  __m512 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  const uint8_t* row = W.row(r);
  const int64_t ng = a.nb / 4, nsg = ng / 4;
  constexpr int kGroupBytes = 4 * Dec::kBB;
  for (int64_t s = 0; s < nsg; ++s) {
    __m512i A[4], B[4];
    __m512 DW[4];
    const uint8_t* sg = row + s * 4 * kGroupBytes;
    prefetch_stream(sg, 4 * kGroupBytes);
#pragma GCC unroll 4
    for (int d = 0; d < 4; ++d) Dec::group_raw(row + (4 * s + d) * kGroupBytes, &A[d], &B[d], &DW[d]);
    superblock_dots<T>(A, B, Dec::scale(order4(DW)), a, xt, t0, s, acc);
  }
  gemv_tail<Dec, T>(row, a, t0, ng, 4 * nsg, acc);
  for (int t = 0; t < T; ++t) Y[(t0 + t) * ldy + r] = hsum(acc[t]);
}

// GEMV, rows [r0, r1), for the decoders with fetch4 / split
// stages (MXFP4, Q4_0): gemv_int's math (16 blocks per float step), software
// pipelined: the loads, code permutes and scales of the next super-group (the
// next row's first one at the end of a row) are issued before the nibble
// decode and dot products of the current one. On Zen 4 this loop is bound by
// latency and op count rather than by one port ([2048x4096], 1 thread,
// L2-resident, ns per 128 weights: MXFP4 2.54 -> 2.29 with the two-load fetch,
// Q4_0 2.58 -> 2.50; Q8_0, whose decode is all loads, got slower: it keeps
// gemv_int). Every row goes through the same float operations in the same
// order whatever [r0, r1) is, so thread splits and expert slices agree bitwise.
template <class Dec, int T>
void gemv_pipelined(const WeightMatrix& W, int64_t r0, int64_t r1, const ActQ& a,
                    const int8_t* xt, int64_t t0, float* Y, int64_t ldy) {
  const int64_t ng = a.nb / 4, nsg = ng / 4;
  constexpr int kSgBytes = 16 * Dec::kBB;
  __m512i zn[4];
  __m512 dn = _mm512_setzero_ps();
  if (nsg > 0 && r0 < r1) dn = Dec::fetch4(W.row(r0), zn);
  for (int64_t r = r0; r < r1; ++r) {
    __m512 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
    const uint8_t* row = W.row(r);
    for (int64_t s = 0; s < nsg; ++s) {
      __m512i zc[4];
#pragma GCC unroll 4
      for (int d = 0; d < 4; ++d) zc[d] = zn[d];
      const __m512 DWo = Dec::scale(dn);
      // next super-group: this row's, the next row's first, or (at the very
      // end) this one again, unused
      dn = Dec::fetch4(s + 1 < nsg ? row + (s + 1) * kSgBytes
                                   : (r + 1 < r1 ? W.row(r + 1) : row + s * kSgBytes),
                       zn);
      __m512i A[4], B[4];
#pragma GCC unroll 4
      for (int d = 0; d < 4; ++d) Dec::split(zc[d], &A[d], &B[d]);
      superblock_dots<T>(A, B, DWo, a, xt, t0, s, acc);
    }
    gemv_tail<Dec, T>(row, a, t0, ng, 4 * nsg, acc);
    for (int t = 0; t < T; ++t) Y[(t0 + t) * ldy + r] = hsum(acc[t]);
  }
}

// GEMV, one split row: gemv_int's math (16 blocks per float
// step, the same operations in the same order, so both layouts give the same
// bits) on aligned loads. No software pipelining: with no permutes left in the
// decode, out-of-order execution already overlaps the loads with the dots.
template <class Dec, int T>
void gemv_split(const WeightMatrix& W, int64_t r, const ActQ& a, const int8_t* xt, int64_t t0,
                float* Y, int64_t ldy) {
  using S = SplitSrc<Dec>;
  __m512 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  const uint8_t* row = W.row(r);
  const int64_t nsg = a.nb / 16;
  constexpr int kSgBytes = 16 * Dec::kBB;  // a super-group's share of the row, either layout
  for (int64_t s = 0; s < nsg; ++s) {
    prefetch_stream(row + s * kSgBytes, kSgBytes);
    const __m512 DWo = Dec::scale(S::scales16(row, s));
    __m512i A[4], B[4];
#pragma GCC unroll 4
    for (int d = 0; d < 4; ++d) S::codes(row, 16 * s + 4 * d, &A[d], &B[d]);
    superblock_dots<T>(A, B, DWo, a, xt, t0, s, acc);
  }
  for (int t = 0; t < T; ++t) Y[(t0 + t) * ldy + r] = hsum(acc[t]);
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

// Q4_K decode (1..3 tokens), one row: two super-blocks (4 quad groups) per
// float step, as gemv_int; an odd last super-block goes through tile_q4k's math.
template <int T>
void gemv_q4k(const WeightMatrix& W, int64_t r, const ActQ& a, int64_t t0, float* Y,
              int64_t ldy) {
  __m512 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  const uint8_t* row = W.row(r);
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  const __m512i idxA = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
  const __m512i idxB = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
  const __m512i idx0 = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  const __m512i idx1 = _mm512_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7);
  const int64_t nsb = a.nb / 8, npair = nsb / 2;
  auto scales = [&](const uint8_t* p, __m256* dsc, __m256* mn) {
    const __m128 dd = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(
        load_u16(p) | (static_cast<uint32_t>(load_u16(p + 2)) << 16))));
    uint64_t sc64, mn64;
    q4k_scales_mins(p + 4, &sc64, &mn64);
    *dsc = _mm256_mul_ps(_mm256_broadcastss_ps(dd), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(
                                                        _mm_cvtsi64_si128(static_cast<long long>(sc64)))));
    *mn = _mm256_mul_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dd)),
                        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(
                            _mm_cvtsi64_si128(static_cast<long long>(mn64)))));
  };
  for (int64_t s = 0; s < npair; ++s) {
    __m512i P[4][T];
    __m512 DW[4];
    __m256 dsc[2], mn[2];
#pragma GCC unroll 2
    for (int h2 = 0; h2 < 2; ++h2) {
      const uint8_t* p = row + (2 * s + h2) * 144;
      scales(p, &dsc[h2], &mn[h2]);
      const __m512 DSC = _mm512_castps256_ps512(dsc[h2]);
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        const int d = 2 * h2 + h;
        const __m512i z = _mm512_loadu_si512(p + 16 + 64 * h);
        const __m512i lo = _mm512_and_si512(z, m4);
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(z, 4), m4);
        const __m512i A = _mm512_permutex2var_epi64(lo, idxA, hi);
        const __m512i B = _mm512_permutex2var_epi64(lo, idxB, hi);
        DW[d] = _mm512_permutexvar_ps(h ? idx1 : idx0, DSC);
        const int64_t g = 4 * s + d;
        group_dots<T>(A, B, a, t0, g, P[d]);
      }
    }
    const __m512 DWo = order4(DW);
    const __m512 MN = _mm512_insertf32x8(_mm512_castps256_ps512(mn[0]), mn[1], 1);
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      const __m512 f = _mm512_cvtepi32_ps(reduce4(P[0][t], P[1][t], P[2][t], P[3][t]));
      const __m512 DX = _mm512_loadu_ps(a.dr(t0 + t) + 16 * s);
      acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(f, DX), DWo, acc[t]);
      acc[t] = _mm512_fnmadd_ps(MN, _mm512_loadu_ps(a.c(t0 + t) + 16 * s), acc[t]);
    }
  }
  if (nsb > 2 * npair) {  // odd last super-block
    const int64_t sb = nsb - 1;
    const uint8_t* p = row + sb * 144;
    __m256 dsc, mn;
    scales(p, &dsc, &mn);
    const __m512 DSC = _mm512_castps256_ps512(dsc);
    for (int h = 0; h < 2; ++h) {
      const __m512i z = _mm512_loadu_si512(p + 16 + 64 * h);
      const __m512i lo = _mm512_and_si512(z, m4);
      const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(z, 4), m4);
      __m512i A[1] = {_mm512_permutex2var_epi64(lo, idxA, hi)};
      __m512i B[1] = {_mm512_permutex2var_epi64(lo, idxB, hi)};
      __m512 DW1[1] = {_mm512_permutexvar_ps(h ? idx1 : idx0, DSC)};
      __m512 acc1[1][T];
      for (int t = 0; t < T; ++t) acc1[0][t] = acc[t];
      group_fma<1, T, false>(acc1, A, B, DW1, a, t0, 2 * sb + h);
      for (int t = 0; t < T; ++t) acc[t] = acc1[0][t];
    }
    for (int t = 0; t < T; ++t)
      acc[t] = _mm512_fnmadd_ps(_mm512_zextps256_ps512(mn),
                                _mm512_zextps256_ps512(_mm256_loadu_ps(a.c(t0 + t) + sb * 8)),
                                acc[t]);
  }
  for (int t = 0; t < T; ++t) Y[(t0 + t) * ldy + r] = hsum(acc[t]);
}

}  // namespace

bool act_cscale_avx512(GGMLType t, float* cscale) {
  switch (t) {
    case GGMLType::Q8_0: *cscale = 128.0f / 4.0f; return true;  // k = 128, 4 lanes per block
    case GGMLType::Q4_0: *cscale = 8.0f / 4.0f; return true;    // k = 8
    case GGMLType::IQ4_NL: *cscale = 128.0f / 4.0f; return true;  // level + 128
    case GGMLType::MXFP4: *cscale = 12.0f / 4.0f; return true;  // k = 12
    case GGMLType::Q4_K: *cscale = 1.0f; return true;           // mins use dx*sum(q)
    default: return false;
  }
}

void gemm_avx512(const WeightMatrix& W, const ActQ* act, const float* X, int64_t ldx,
                 int64_t n_tokens, float* Y, int64_t ldy, int64_t r0, int64_t r1) {
  auto ints = [&](auto dec) {
    using Dec = decltype(dec);
    constexpr bool kSplittable = split::scale_bytes(Dec::kType) > 0;  // quant/split_layout.h
    auto f = [&](auto R, auto T, int64_t r, int64_t t) {
      constexpr int kR = decltype(R)::value, kT = decltype(T)::value;
      if constexpr (kSplittable) {
        if (W.split) return tile_int<Dec, SplitSrc<Dec>, kR, kT>(W, r, *act, t, Y, ldy);
      }
      tile_int<Dec, GgmlSrc<Dec>, kR, kT>(W, r, *act, t, Y, ldy);
    };
    auto gemv = [&](auto TT) {
      constexpr int Tn = decltype(TT)::value;
      int8_t* xt = nullptr;  // (superblock_dots: 2+ tokens)
      if (Tn > 1) {
        xt = reinterpret_cast<int8_t*>(scratch_bytes(static_cast<size_t>(Tn * (act->nb / 16) * 512)));
        transpose_act(*act, Tn, xt);
      }
      if constexpr (kSplittable) {
        if (W.split) {
          for (int64_t r = r0; r < r1; ++r) gemv_split<Dec, Tn>(W, r, *act, xt, 0, Y, ldy);
          return;
        }
      }
      if constexpr (std::is_same<Dec, DecQ8_0>::value) {
        for (int64_t r = r0; r < r1; ++r) gemv_int<Dec, Tn>(W, r, *act, xt, 0, Y, ldy);
      } else {
        gemv_pipelined<Dec, Tn>(W, r0, r1, *act, xt, 0, Y, ldy);
      }
    };
    // The GEMV (one row after the other: each thread reads one contiguous
    // stream) for 1 token, and on rows under 8 KB for 2..3 tokens, or up to 8
    // while the activations of all tokens stay within 6 KB (L1, re-read for
    // every row). Tiles of 4 interleaved short rows halve the DRAM
    // throughput (Q8_0 [32768x1024], 2 threads, 2 tokens 1.15 -> 2.28 ms;
    // MXFP4 split [4096x2048] 0.16 -> 0.27 ms), but reuse each activation
    // load 4 times: on rows of 8 KB and more they stream as well and win
    // (Q8_0 [4096x8192], in-process A/B: 2 tokens GEMV 1.84 / tiles 1.29 ms,
    // 3 tokens 2.45 / 1.32), as they do once the activations outgrow L1
    // (MXFP4 split [2048x4096], 4 tokens: 0.34 / 0.25 ms), while on
    // [32768x1024] the GEMV wins up to 6 tokens (4: 1.63 / 2.30 ms, 6: 2.31 /
    // 2.58; 8: a tie). Rows of 4 KB with 2..3 tokens: within noise.
    if (n_tokens == 1 ||
        (n_tokens <= 8 && W.row_stride < 8192 && (n_tokens <= 3 || n_tokens * W.cols <= 6144))) {
      switch (n_tokens) {
        case 8: gemv(IC<8>{}); break;
        case 7: gemv(IC<7>{}); break;
        case 6: gemv(IC<6>{}); break;
        case 5: gemv(IC<5>{}); break;
        case 4: gemv(IC<4>{}); break;
        case 3: gemv(IC<3>{}); break;
        case 2: gemv(IC<2>{}); break;
        default: gemv(IC<1>{}); break;
      }
      return;
    }
    drive<4>(r0, r1, n_tokens, f);
  };
  switch (W.type) {
    case GGMLType::F32:
    case GGMLType::F16:
    case GGMLType::BF16: gemm_float_avx512(W, X, ldx, n_tokens, Y, ldy, r0, r1); return;
    case GGMLType::Q8_0: ints(DecQ8_0{}); return;
    case GGMLType::Q4_0: ints(DecQ4_0{}); return;
    case GGMLType::IQ4_NL: ints(DecIQ4_NL{}); return;
    case GGMLType::MXFP4: ints(DecMXFP4{}); return;
    case GGMLType::Q4_K: {
      auto f = [&](auto R, auto T, int64_t r, int64_t t) {
        tile_q4k<decltype(R)::value, decltype(T)::value>(W, r, *act, t, Y, ldy);
      };
      if (n_tokens < 4) {
        for (int64_t r = r0; r < r1; ++r) {
          switch (n_tokens) {
            case 3: gemv_q4k<3>(W, r, *act, 0, Y, ldy); break;
            case 2: gemv_q4k<2>(W, r, *act, 0, Y, ldy); break;
            default: gemv_q4k<1>(W, r, *act, 0, Y, ldy); break;
          }
        }
      } else
        drive<4>(r0, r1, n_tokens, f);
      return;
    }
    default: return;
  }
}

uint64_t vnni_spin_avx512(int64_t iters) {
  // 12 independent accumulators: enough to cover vpdpbusd's latency on every
  // port that issues it (Zen 4, Zen 5, Ice Lake / Sapphire Rapids).
  __m512i acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_epi32(i);
  __m512i u = _mm512_set1_epi8(3), v = _mm512_set1_epi8(5);
  for (int64_t n = 0; n < iters; ++n) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], u, v);
    __asm__ volatile("" : "+v"(u));  // keeps the loop from being folded
  }
  __m512i s = acc[0];
  for (int i = 1; i < 12; ++i) s = _mm512_add_epi32(s, acc[i]);
  return static_cast<uint32_t>(_mm512_reduce_add_epi32(s));
}

}  // namespace qk
}  // namespace pyv4
