// The AVX2 decoders of the super-block weight types (math in quant/kernels.h):
// per super-block its scales, per 32-block its 32 codes as one ymm in element
// order. Shared by the plain-layout tiles (kernels_lowbit_avx2.cpp) and the
// lane GEMM's packers (gemm_lane_avx2.cpp). Include only from *_avx2.cpp:
// anonymous namespace, so each file keeps its own copy (see tile_drive.h).
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "quant/blocks.h"
#include "quant/iq1s_grid.h"
#include "quant/iq2s_grid.h"
#include "quant/iq2xs_grid.h"
#include "quant/iq2xxs_grid.h"
#include "quant/iq3s_grid.h"
#include "quant/iq3xxs_grid.h"

namespace pyv4 {
namespace qk {
namespace {

using namespace qblocks;


inline __m256i load256(const uint8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// Per super-block and row of a K type: the 16 sub-block scales a_s as int8 in
// both 128-bit lanes, -d2 * m_s as floats, and d. Per block, one vpshufb from
// a8 makes the vpmaddwd multiplier (sub-block 2b's a_s in the low lane, 2b + 1's
// in the high lane) as a_s * 256: a byte into the high byte of each word needs
// no sign extension, and the sums stay exact (|sum| < 2^31, a multiple of 256:
// exact as a float), so the GEMV scales by d / 256. (The words were stored and
// read back a dword a block before: the loads missed store forwarding on Zen 2,
// Q2_K 1 token 13.1-13.8 -> 11.2-11.3 ns per 256 weights this way, Q3_K / Q5_K /
// Q6_K 15-19 % less.)
struct KScales {
  __m256i a8;
  alignas(32) float mneg[16];
  float d;
};

// The scale words a_s (16 int16) of a K type's super-block.
inline __m256i scale_words(const KScales& k) { return _mm256_cvtepi8_epi16(_mm256_castsi256_si128(k.a8)); }

// The K scales a_s (16 int8), with d and -c * d * a_s as mneg.
inline void k_scales(__m128i a, float d, float c, KScales* k) {
  k->a8 = _mm256_broadcastsi128_si256(a);
  k->d = d;
  const __m256 nd = _mm256_set1_ps(-c * d);
  _mm256_store_ps(k->mneg, _mm256_mul_ps(nd, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(a))));
  _mm256_store_ps(k->mneg + 8, _mm256_mul_ps(nd, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(a, 8)))));
}

// Each decoder's kMaxCode: the largest code its codes() returns (what bounds a
// vpmaddubsw pair, kMaxCode * 2 * 127). The K-form decoders' kDecodeAhead: whether
// kernels_lowbit_avx2.cpp's GEMV tiles decode block b + 1 before block b's products.
// Codes of block b (0..7) of a super-block at p (32 bytes, 0..3 or 0..7).
struct DecQ2_K {
  static constexpr bool kDecodeAhead = false;
  static constexpr int kMaxCode = 3;
  static constexpr size_t kBytes = sizeof(BlockQ2_K);
  static inline void scales(const uint8_t* p, KScales* k) {
    const BlockQ2_K* blk = reinterpret_cast<const BlockQ2_K*>(p);
    const __m128i s = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk->scales));
    const __m128i m4 = _mm_set1_epi8(0x0F);
    k->a8 = _mm256_and_si256(_mm256_broadcastsi128_si256(s), _mm256_set1_epi8(0x0F));
    const __m128i mn = _mm_and_si128(_mm_srli_epi16(s, 4), m4);
    const __m256 nd = _mm256_set1_ps(-_cvtsh_ss(blk->dmin));
    _mm256_store_ps(k->mneg, _mm256_mul_ps(nd, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(mn))));
    _mm256_store_ps(k->mneg + 8, _mm256_mul_ps(
        nd, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(mn, 8)))));
    k->d = _cvtsh_ss(blk->d);
  }
  static inline __m256i codes(const uint8_t* p, int b) {
    const BlockQ2_K* blk = reinterpret_cast<const BlockQ2_K*>(p);
    const __m256i v = load256(blk->qs + 32 * (b / 4));
    return _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(2 * (b % 4))),
                            _mm256_set1_epi8(3));
  }
};

struct DecQ3_K {
  static constexpr bool kDecodeAhead = false;
  static constexpr int kMaxCode = 7;
  static constexpr size_t kBytes = sizeof(BlockQ3_K);
  static inline void scales(const uint8_t* p, KScales* k) {
    const BlockQ3_K* blk = reinterpret_cast<const BlockQ3_K*>(p);
    uint64_t lo, hi;
    q3k_scales(blk->scales, &lo, &hi);
    const __m128i s = _mm_set_epi64x(static_cast<long long>(hi), static_cast<long long>(lo));
    k_scales(_mm_sub_epi8(s, _mm_set1_epi8(32)), _cvtsh_ss(blk->d), 4.0f, k);  // d2 = 4d, m_s = a_s
  }
  static inline __m256i codes(const uint8_t* p, int b) {
    const BlockQ3_K* blk = reinterpret_cast<const BlockQ3_K*>(p);
    const __m256i one = _mm256_set1_epi8(1);
    const __m256i lo = _mm256_and_si256(
        _mm256_srl_epi16(load256(blk->qs + 32 * (b / 4)), _mm_cvtsi32_si128(2 * (b % 4))),
        _mm256_set1_epi8(3));
    const __m256i hi =
        _mm256_and_si256(_mm256_srl_epi16(load256(blk->hmask), _mm_cvtsi32_si128(b)), one);
    return _mm256_or_si256(lo, _mm256_slli_epi16(hi, 2));
  }
};

// Q5_K as a K type: the scale and min of 32-block j for both its halves,
// c = nibble | high bit << 4 (0..31).
struct DecQ5_K {
  static constexpr bool kDecodeAhead = false;
  static constexpr int kMaxCode = 31;
  static constexpr size_t kBytes = sizeof(BlockQ5_K);
  static inline void scales(const uint8_t* p, KScales* k) {
    const BlockQ5_K* blk = reinterpret_cast<const BlockQ5_K*>(p);
    uint64_t sc, mn;
    q4k_scales_mins(blk->scales, &sc, &mn);
    auto twice = [](uint64_t v) {  // byte j -> bytes 2j, 2j + 1
      const __m128i x = _mm_cvtsi64_si128(static_cast<long long>(v));
      return _mm_unpacklo_epi8(x, x);
    };
    k->a8 = _mm256_broadcastsi128_si256(twice(sc));  // a_s <= 63
    const __m128i m = twice(mn);
    const __m256 nd = _mm256_set1_ps(-_cvtsh_ss(blk->dmin));
    _mm256_store_ps(k->mneg, _mm256_mul_ps(nd, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(m))));
    _mm256_store_ps(k->mneg + 8, _mm256_mul_ps(nd, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(m, 8)))));
    k->d = _cvtsh_ss(blk->d);
  }
  static inline __m256i codes(const uint8_t* p, int b) {
    const BlockQ5_K* blk = reinterpret_cast<const BlockQ5_K*>(p);
    const __m256i lo = _mm256_and_si256(
        _mm256_srl_epi16(load256(blk->qs + 32 * (b / 2)), _mm_cvtsi32_si128(4 * (b % 2))), _mm256_set1_epi8(15));
    const __m256i hi =
        _mm256_and_si256(_mm256_srl_epi16(load256(blk->qh), _mm_cvtsi32_si128(b)), _mm256_set1_epi8(1));
    return _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
  }
};

// Q6_K as a K type: a_s = int8 scale, c = 6-bit code (0..63), d2 = 32d.
struct DecQ6_K {
  static constexpr bool kDecodeAhead = false;
  static constexpr int kMaxCode = 63;
  static constexpr size_t kBytes = sizeof(BlockQ6_K);
  static inline void scales(const uint8_t* p, KScales* k) {
    const BlockQ6_K* blk = reinterpret_cast<const BlockQ6_K*>(p);
    k_scales(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk->scales)), _cvtsh_ss(blk->d), 32.0f, k);
  }
  static inline __m256i codes(const uint8_t* p, int b) {
    const BlockQ6_K* blk = reinterpret_cast<const BlockQ6_K*>(p);
    const int n = b / 4, j = b % 4;
    const __m256i lo = _mm256_and_si256(
        _mm256_srl_epi16(load256(blk->ql + 64 * n + 32 * (j % 2)), _mm_cvtsi32_si128(4 * (j / 2))),
        _mm256_set1_epi8(15));
    const __m256i hi = _mm256_and_si256(
        _mm256_srl_epi16(load256(blk->qh + 32 * n), _mm_cvtsi32_si128(2 * j)), _mm256_set1_epi8(3));
    return _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
  }
};

// The 4 qwords f(0..3) as one vector (a 32-block of 8-element grid entries).
template <class F>
inline __m256i qwords4(F&& f) {
  return _mm256_setr_epi64x(static_cast<long long>(f(0)), static_cast<long long>(f(1)),
                            static_cast<long long>(f(2)), static_cast<long long>(f(3)));
}

// Two table qwords into one 128-bit vector, straight from memory.
inline __m128i load2q(const uint64_t* a, const uint64_t* b) {
  const __m128i lo = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(a));
  return _mm_castpd_si128(_mm_loadh_pd(_mm_castsi128_pd(lo), reinterpret_cast<const double*>(b)));
}

// Table qwords T[i0..i3] as one vector, loaded straight from memory (IQ2_XXS,
// IQ2_XS: 8-15 % faster than building them in general registers as qwords4
// does; IQ1_M's K-form decode measured ~1.5x slower this way, so it keeps qwords4).
inline __m256i table_qwords(const uint64_t* T, uint32_t i0, uint32_t i1, uint32_t i2, uint32_t i3) {
  return _mm256_set_m128i(load2q(T + i2, T + i3), load2q(T + i0, T + i1));
}

// The signs of IQ2_XXS / IQ3_XXS: per 32-block a sign word sg of 4 x 7-bit
// fields, one per grid entry, whose 8th sign is the parity of the other 7
// (kIq2Signs). Computed instead of looked up: 4 table loads per block made the
// Zen 2 GEMV load-bound (IQ2_XXS 1 token 23.3-24.7 -> 18.8-18.9 ns per 256
// weights this way, with the grid loads left). Per super-block, each block's sign source is
// the qword [Q, sg], Q = the XOR of every 7-bit window of sg (bit k: bits
// k - 6..k), so bit 7l + 6 of Q is field l's parity; per block one vpshufb
// takes each sign's byte out of the source, a per-byte bit test makes it a
// vpsignb operand.
struct SignSources {
  alignas(32) uint64_t w[8];
};

// Bit k of each 64-bit lane: the XOR of its bits k - 6..k.
inline __m256i window7_xor(__m256i x) {
  const __m256i a = _mm256_xor_si256(x, _mm256_add_epi64(x, x));    // k - 1..k
  const __m256i b = _mm256_xor_si256(a, _mm256_slli_epi64(a, 2));    // k - 3..k
  const __m256i w8 = _mm256_xor_si256(b, _mm256_slli_epi64(b, 4));  // k - 7..k
  return _mm256_xor_si256(w8, _mm256_slli_epi64(x, 7));              // k - 6..k
}

// The sign sources of a super-block's 8 blocks from their sign words (block order).
inline void sign_sources(__m256i sg, SignSources* s) {
  const __m256i q = window7_xor(sg);
  // [Q_b, sg_b]: unpacklo holds blocks 0, 1 | 4, 5, unpackhi 2, 3 | 6, 7
  const __m256i lo = _mm256_unpacklo_epi32(q, sg), hi = _mm256_unpackhi_epi32(q, sg);
  _mm256_store_si256(reinterpret_cast<__m256i*>(s->w), _mm256_permute2x128_si256(lo, hi, 0x20));
  _mm256_store_si256(reinterpret_cast<__m256i*>(s->w + 4), _mm256_permute2x128_si256(lo, hi, 0x31));
}

// Byte 8l + j of a block's signs: bit 7l + j of sg (j < 7, source byte 4 + (7l + j) / 8)
// or, for j = 7, bit 7l + 6 of Q (source byte (7l + 6) / 8).
struct SignGather {
  alignas(32) int8_t byte[32];
  alignas(32) int8_t bit[32];
};
constexpr SignGather make_sign_gather() {
  SignGather g{};
  for (int l = 0; l < 4; ++l)
    for (int j = 0; j < 8; ++j) {
      const int k = 7 * l + (j < 7 ? j : 6);
      g.byte[8 * l + j] = static_cast<int8_t>((j < 7 ? 4 : 0) + k / 8);
      g.bit[8 * l + j] = static_cast<int8_t>(1u << (k % 8));
    }
  return g;
}
inline constexpr SignGather kSignGather = make_sign_gather();

// The vpsignb operand of block b: negative where the sign bit is set, +127 elsewhere.
inline __m256i block_signs(const SignSources& s, int b) {
  const __m256i v = _mm256_set1_epi64x(static_cast<long long>(s.w[b]));
  const __m256i bit = load256(reinterpret_cast<const uint8_t*>(kSignGather.bit));
  const __m256i picked = _mm256_shuffle_epi8(v, load256(reinterpret_cast<const uint8_t*>(kSignGather.byte)));
  return _mm256_add_epi8(_mm256_and_si256(picked, bit), _mm256_set1_epi8(0x7F));  // bit 0x80 -> -1
}

// Offset codes k + g where the sign s is +1, k - g where it is -1 (g the grid
// magnitudes of a 32-block, s its byte signs as vpsignb operands: any positive
// byte for +1, any negative one for -1).
inline __m256i signed_codes(__m256i g, __m256i s, char k) {
  return _mm256_add_epi8(_mm256_set1_epi8(k), _mm256_sign_epi8(g, s));
}

// The K scales a_s = 2 v + 1 of the 16 bytes v (v <= 15), with d and -c * d * a_s as mneg.
inline void odd_scales(__m128i v, float d, float c, KScales* k) {
  k_scales(_mm_add_epi8(_mm_add_epi8(v, v), _mm_set1_epi8(1)), d, c, k);
}

// The K scales of IQ2_XS / IQ2_S: a_s = 2 * nibble s of the 8 scale bytes + 1
// (byte b's low nibble is sub-block 2b, its high nibble 2b + 1), d = d16 / 8, c = 43.
template <class Blk>
struct Iq2NibbleScales {
  static constexpr int kMaxCode = 86;  // signed grid + 43
  static constexpr bool kDecodeAhead = true;
  static constexpr size_t kBytes = sizeof(Blk);
  static inline void scales(const uint8_t* p, KScales* k) {
    const Blk* blk = reinterpret_cast<const Blk*>(p);
    const __m128i w = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk->scales));
    const __m128i m4 = _mm_set1_epi8(15);
    const __m128i nib = _mm_unpacklo_epi8(_mm_and_si128(w, m4), _mm_and_si128(_mm_srli_epi16(w, 4), m4));
    odd_scales(nib, _cvtsh_ss(blk->d) * 0.125f, 43.0f, k);
  }
};

// Byte e -1 where bit e of `bits` is set, +1 elsewhere (IQ3_S / IQ2_S: a sign
// bit per element).
inline __m256i bit_signs(uint32_t bits) {
  const __m256i bytes = _mm256_shuffle_epi8(
      _mm256_set1_epi32(static_cast<int>(bits)),
      _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
  const __m256i bit = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ull));
  return _mm256_or_si256(_mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit), _mm256_set1_epi8(1));
}

// IQ2_XS as a K type: a_s = 2 * nibble + 1, c = signed grid + 43 (0..86),
// d = d16 / 8, d2 * m_s = 43 d a_s (w = d16 * a_s / 8 * (c - 43)).
struct DecIQ2_XS : Iq2NibbleScales<BlockIQ2_XS> {
  static inline __m256i codes(const uint8_t* p, int b) {
    const BlockIQ2_XS* blk = reinterpret_cast<const BlockIQ2_XS*>(p);
    uint32_t w[4];
    for (int l = 0; l < 4; ++l) w[l] = load_u16(blk->qs + 8 * b + 2 * l);
    const __m256i g = table_qwords(kIq2xsGrid, w[0] & 511, w[1] & 511, w[2] & 511, w[3] & 511);
    return signed_codes(g, table_qwords(kIq2Signs.m, w[0] >> 9, w[1] >> 9, w[2] >> 9, w[3] >> 9), 43);
  }
};

// IQ1_M as a K type: a_s = 2 s + 1, c = 4 (grid + 1) + (delta > 0) (0..9),
// d = d16 / 4, d2 * m_s = 9/8 d16 a_s (w = d16 a_s (grid +- 1/8) = d a_s c - 9/8 d16 a_s).
struct DecIQ1_M {
  static constexpr bool kDecodeAhead = false;
  static constexpr int kMaxCode = 9;
  static constexpr size_t kBytes = sizeof(BlockIQ1_M);
  static inline void scales(const uint8_t* p, KScales* k) {
    const BlockIQ1_M& blk = *reinterpret_cast<const BlockIQ1_M*>(p);
    // sub-block s: bits 3 (s % 4) of scale word s / 4 (shifted as dwords: AVX2 has no
    // per-word variable shift)
    const __m128i w = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk.scales));
    const __m256i sh = _mm256_setr_epi32(0, 3, 6, 9, 0, 3, 6, 9), m7 = _mm256_set1_epi32(7);
    auto half = [&](int h) {  // sub-blocks 8h .. 8h + 7: words 2h, 2h + 1
      const __m128i ww = _mm_shuffle_epi8(w, _mm_setr_epi8(4 * h, 4 * h + 1, 4 * h, 4 * h + 1, 4 * h, 4 * h + 1, 4 * h,
                                                           4 * h + 1, 4 * h + 2, 4 * h + 3, 4 * h + 2, 4 * h + 3,
                                                           4 * h + 2, 4 * h + 3, 4 * h + 2, 4 * h + 3));
      return _mm256_and_si256(_mm256_srlv_epi32(_mm256_cvtepu16_epi32(ww), sh), m7);
    };
    const __m256i s = _mm256_permute4x64_epi64(_mm256_packus_epi32(half(0), half(1)), _MM_SHUFFLE(3, 1, 2, 0));
    odd_scales(_mm_packus_epi16(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1)),
               _cvtsh_ss(iq1m_d(blk)) * 0.25f, 4.5f, k);
  }
  static inline __m256i codes(const uint8_t* p, int b) {
    const BlockIQ1_M* blk = reinterpret_cast<const BlockIQ1_M*>(p);
    auto nib = [&](int l) { return (blk->qh[2 * b + l / 2] >> (4 * (l % 2))) & 15; };
    const __m256i g = qwords4([&](int l) { return kIq1sGrid[blk->qs[4 * b + l] | ((nib(l) & 7) << 8)]; });
    // entry l's delta sign is bit 4l + 3 of the block's two qh bytes: 1 where clear
    const __m256i bit = _mm256_setr_epi64x(8, 0x80, 0x800, 0x8000);
    const __m256i neg = _mm256_cmpeq_epi64(_mm256_and_si256(_mm256_set1_epi64x(load_u16(blk->qh + 2 * b)), bit), bit);
    const __m256i up = _mm256_andnot_si256(neg, _mm256_set1_epi8(1));
    return _mm256_add_epi8(_mm256_slli_epi16(g, 2), up);  // bytes <= 2: no carry across
  }
};

// IQ2_S as IQ2_XS (same scales and codes), its 10-bit grid index and sign byte
// per 8 elements stored apart.
struct DecIQ2_S : Iq2NibbleScales<BlockIQ2_S> {
  [[gnu::always_inline]] static inline __m256i codes(const uint8_t* p, int b) {
    const BlockIQ2_S* blk = reinterpret_cast<const BlockIQ2_S*>(p);
    const uint8_t* q = blk->qs + 4 * b;
    const uint32_t h = blk->qh[b];  // index l's high bits at 2l
    const __m256i g = table_qwords(kIq2sGrid, q[0] | ((h << 8) & 0x300), q[1] | ((h << 6) & 0x300),
                                   q[2] | ((h << 4) & 0x300), q[3] | ((h << 2) & 0x300));
    uint32_t sg;
    std::memcpy(&sg, blk->qs + 32 + 4 * b, 4);
    return signed_codes(g, bit_signs(sg), 43);
  }
};

// The 8 block scales of a super-block, dw = d * (0.5 + s) * c, from the 8 dwords
// w whose top nibbles are the s.
inline void offset_dw8(__m256i w, float d, float c, float* dw) {
  const __m256 s = _mm256_add_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(w, 28)), _mm256_set1_ps(0.5f));
  _mm256_storeu_ps(dw, _mm256_mul_ps(_mm256_set1_ps(d * c), s));
}

// The offset types below are decoders of one super-block: begin(p, dw) takes the
// super-block at p and writes its 8 block scales dw, codes(b) decodes block b.

// IQ2_XXS: codes u = signed grid + 43 of block b (0..7); dw = d (0.5 + s) / 4, s
// the top nibble of the block's sign word at qs + 8b + 4.
struct OffIQ2_XXS {
  static constexpr int kMaxCode = 86;
  static constexpr size_t kBytes = sizeof(BlockIQ2_XXS);
  const BlockIQ2_XXS* blk;
  SignSources src;
  inline void begin(const uint8_t* p, float* dw) {
    blk = reinterpret_cast<const BlockIQ2_XXS*>(p);
    const __m256i lo = load256(blk->qs), hi = load256(blk->qs + 32);  // qword b: grid indices | sg << 32
    // the sign words in block order: shufps takes blocks 0, 1, 4, 5 | 2, 3, 6, 7, vpermq
    // puts the halves in place (two vpermd took ~3 cycles more on Zen 2)
    const __m256 odd = _mm256_shuffle_ps(_mm256_castsi256_ps(lo), _mm256_castsi256_ps(hi), _MM_SHUFFLE(3, 1, 3, 1));
    const __m256i sg = _mm256_permute4x64_epi64(_mm256_castps_si256(odd), _MM_SHUFFLE(3, 1, 2, 0));
    sign_sources(sg, &src);
    offset_dw8(sg, _cvtsh_ss(blk->d), 0.25f, dw);
  }
  [[gnu::always_inline]] inline __m256i codes(int b) const {
    uint32_t ix;
    std::memcpy(&ix, blk->qs + 8 * b, 4);
    const __m256i g = table_qwords(kIq2xxsGrid, ix & 255, (ix >> 8) & 255, (ix >> 16) & 255, ix >> 24);
    return signed_codes(g, block_signs(src, b), 43);
  }
};

// IQ3_XXS block b: codes u = signed grid + 64 (2..126), and dw = d (0.5 + s) / 2
// (s: the top nibble of the block's sign word at qs + 64 + 4b).
struct OffIQ3_XXS {
  static constexpr int kMaxCode = 126;
  static constexpr size_t kBytes = sizeof(BlockIQ3_XXS);
  const BlockIQ3_XXS* blk;
  SignSources src;
  inline void begin(const uint8_t* p, float* dw) {
    blk = reinterpret_cast<const BlockIQ3_XXS*>(p);
    const __m256i sg = load256(blk->qs + 64);  // the 8 sign words
    sign_sources(sg, &src);
    offset_dw8(sg, _cvtsh_ss(blk->d), 0.5f, dw);
  }
  [[gnu::always_inline]] inline __m256i codes(int b) const {
    // scalar loads, two entries a qword (vpgatherdd measured ~1.7x slower on Zen 4)
    const uint8_t* idx = blk->qs + 8 * b;
    const __m256i g = qwords4([&](int l) {
      return kIq3xxsGrid[idx[2 * l]] | static_cast<uint64_t>(kIq3xxsGrid[idx[2 * l + 1]]) << 32;
    });
    return signed_codes(g, block_signs(src, b), 64);
  }
};

// IQ1_S block b: codes u = 8 (grid + 1) + 2 (delta > 0) (0..18), offset 9, and
// dw = d (2s + 1) / 8 (w = d (2s + 1) (grid +- 1/8) = dw (u - 9)); s = bits 12..14
// of the block's qh word.
struct OffIQ1_S {
  static constexpr int kMaxCode = 18;
  static constexpr size_t kBytes = sizeof(BlockIQ1_S);
  const BlockIQ1_S* blk;
  inline void begin(const uint8_t* p, float* dw) {
    blk = reinterpret_cast<const BlockIQ1_S*>(p);
    const __m256i qh = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk->qh)));
    // 2s + 1 = (0.5 + s) * 2: the s as the top nibble (bit 15, the delta's sign, cleared)
    offset_dw8(_mm256_slli_epi32(_mm256_and_si256(qh, _mm256_set1_epi32(0x7000)), 16), _cvtsh_ss(blk->d), 0.25f,
               dw);
  }
  [[gnu::always_inline]] inline __m256i codes(int b) const {
    const uint32_t qh = load_u16(blk->qh + 2 * b);
    auto at = [&](int l) { return blk->qs[4 * b + l] | (((qh >> (3 * l)) & 7u) << 8); };
    const __m256i g = table_qwords(kIq1sGrid, at(0), at(1), at(2), at(3));
    // + 2 where the delta's sign bit 15 is clear (arithmetic: a branch on random bits mispredicts)
    return _mm256_add_epi8(_mm256_slli_epi16(g, 3), _mm256_set1_epi8(static_cast<char>((~qh >> 14) & 2)));
  }
};

// IQ3_S block b: codes u = signed grid + 16 (1..31), dw = d (1 + 2s), s the
// block's scale nibble; the 9th index bit of entry m is bit m of qh[b]. The grid
// as IQ3_XXS's, scalar loads two entries a qword, each index built arithmetically
// (1 thread, 1 / 3 tokens: 36 / 45 ns per super-block; one vpgatherdd of the
// vector-built indices 35 / 49, the indices stored and loaded back 41 / 53, or
// moved to general registers as two qwords 37 / 51, the table half picked by a
// conditional: a branch on random bits, ~195).
struct OffIQ3_S {
  static constexpr int kMaxCode = 31;
  static constexpr size_t kBytes = sizeof(BlockIQ3_S);
  const BlockIQ3_S* blk;
  inline void begin(const uint8_t* p, float* dw) {
    blk = reinterpret_cast<const BlockIQ3_S*>(p);
    uint32_t sc;
    std::memcpy(&sc, blk->scales, 4);
    const __m256i s = _mm256_and_si256(
        _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(sc)), _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)),
        _mm256_set1_epi32(15));
    const __m256 odd = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_slli_epi32(s, 1), _mm256_set1_epi32(1)));
    _mm256_storeu_ps(dw, _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(blk->d)), odd));
  }
  [[gnu::always_inline]] inline __m256i codes(int b) const {
    const uint8_t* idx = blk->qs + 8 * b;
    const uint32_t h = blk->qh[b];
    auto at = [&](int m) { return kIq3sGrid[idx[m] | ((h << (8 - m)) & 256)]; };
    const __m256i g = qwords4([&](int l) { return at(2 * l) | static_cast<uint64_t>(at(2 * l + 1)) << 32; });
    uint32_t sg;
    std::memcpy(&sg, blk->signs + 4 * b, 4);
    return signed_codes(g, bit_signs(sg), 16);
  }
};

}  // namespace
}  // namespace qk
}  // namespace pyv4
