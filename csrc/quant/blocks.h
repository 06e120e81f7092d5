// GGML block layouts (little-endian, packed) and the scalar helpers shared by
// the reference decoder and the SIMD kernels. Layouts follow GGML's
// ggml-common.h (facts only; the code here is our own).
#pragma once

#include <cstdint>
#include <cstring>

// The scalar helpers below are also called by the CUDA kernels (csrc/cuda/),
// compiled by nvcc for host and device; elsewhere the macro is empty.
#ifdef __CUDACC__
#define PYV4_HD __host__ __device__
#else
#define PYV4_HD
#endif

namespace pyv4 {
namespace qblocks {

// Every helper here has internal linkage (static): this header is included by
// files compiled with AVX2 / AVX-512 flags and by baseline files, and an inline
// function with external linkage would be merged by the linker into one copy,
// possibly the AVX-512 one, which then runs on a machine without AVX-512.

constexpr int kQK = 32;    // elements per Q8_0 / Q4_0 / MXFP4 block
constexpr int kQK_K = 256; // elements per Q4_K super-block

#pragma pack(push, 1)
// Q8_0: value[i] = d * qs[i]
struct BlockQ8_0 {
  uint16_t d;  // f16
  int8_t qs[32];
};
// Q4_0: value[j] = d * ((qs[j] & 15) - 8), value[j + 16] = d * ((qs[j] >> 4) - 8)
struct BlockQ4_0 {
  uint16_t d;  // f16
  uint8_t qs[16];
};
// IQ4_NL: Q4_0's layout with the non-linear levels, value[j] = d * kIq4nlValues[qs[j] & 15],
// value[j + 16] = d * kIq4nlValues[qs[j] >> 4]
using BlockIQ4_NL = BlockQ4_0;
// MXFP4: value[j] = kMxfp4x2[qs[j] & 15] * e8m0_half(e), value[j+16] uses qs[j] >> 4.
// (GGML stores the E2M1 values doubled as int8 and halves the E8M0 scale.)
struct BlockMXFP4 {
  uint8_t e;  // E8M0 exponent
  uint8_t qs[16];
};
// Q4_K super-block of 256: 8 sub-blocks of 32 with 6-bit scale sc[i] and min
// m[i] packed in `scales`. For chunk c = 0..3 (64 elements), byte qs[32c + l]
// holds element 64c + l in its low nibble (sub-block 2c) and element 64c+32+l in
// its high nibble (sub-block 2c+1); value = d*sc[i]*q - dmin*m[i].
struct BlockQ4_K {
  uint16_t d;     // f16 super-block scale for the scales
  uint16_t dmin;  // f16 super-block scale for the mins
  uint8_t scales[12];
  uint8_t qs[128];
};
// Q5_K super-block of 256: Q4_K's scales, mins and nibbles plus a fifth bit:
// element 32j + l (sub-block j < 8, l < 32) has the low nibble of qs[32 (j / 2) + l]
// (j even) or its high one (j odd) and the high bit (qh[l] >> j) & 1;
// value = d*sc[j]*q - dmin*m[j], q in 0..31, sc / m as Q4_K's (q4k_scale_min).
struct BlockQ5_K {
  uint16_t d;     // f16
  uint16_t dmin;  // f16
  uint8_t scales[12];
  uint8_t qh[32];
  uint8_t qs[128];
};
// Q6_K super-block of 256: 16 sub-blocks of 16 with int8 scales. Element
// 128n + 32j + l (n < 2, j < 4, l < 32) has the low 4 bits of
// ql[64n + 32 (j % 2) + l] >> 4 (j / 2) and the high 2 bits (qh[32n + l] >> 2j) & 3;
// value = d*scales[s]*(q - 32) with s = element / 16, q in 0..63.
struct BlockQ6_K {
  uint8_t ql[128];
  uint8_t qh[64];
  int8_t scales[16];
  uint16_t d;  // f16
};
// Q2_K super-block of 256: 16 sub-blocks of 16. Element 128n + 32j + l
// (n < 2, j < 4, l < 32) has the 2-bit code (qs[32n + l] >> 2j) & 3 and sits in
// sub-block s = 8n + 2j + l/16; value = d*(scales[s] & 15)*code - dmin*(scales[s] >> 4).
struct BlockQ2_K {
  uint8_t scales[16];
  uint8_t qs[64];
  uint16_t d;     // f16
  uint16_t dmin;  // f16
};
// Q3_K super-block of 256: 16 sub-blocks of 16. Element 128n + 32j + l has the
// low bits (qs[32n + l] >> 2j) & 3 and the high bit (hmask[l] >> (4n + j)) & 1;
// value = d*(sc[s] - 32)*(low + 4*high - 4), sc the 6-bit scales (q3k_scales).
struct BlockQ3_K {
  uint8_t hmask[32];
  uint8_t qs[64];
  uint8_t scales[12];
  uint16_t d;  // f16
};
// IQ2_XXS super-block of 256: 8 groups of 32, each two little-endian uint32 at
// qs + 8g: a = 4 grid indices (bytes, one per 8 elements), b = 4 x 7 sign bits
// (bits 7l..7l+6 for the 8 elements of index l; the 8th sign is their parity)
// and a 4-bit scale b >> 28. value = d*(0.5 + (b >> 28))*0.25 * grid * sign.
struct BlockIQ2_XXS {
  uint16_t d;  // f16
  uint8_t qs[64];
};
// IQ4_XS super-block of 256: 8 blocks of 32, block b with the 6-bit scale
// ls = ((scales_l[b / 2] >> 4 (b % 2)) & 15) | ((scales_h >> 2b) & 3) << 4 and the
// bytes qs[16b + j] (element j in the low nibble, j + 16 in the high one);
// value = d*(ls - 32) * kIq4nlValues[nibble].
struct BlockIQ4_XS {
  uint16_t d;  // f16
  uint16_t scales_h;
  uint8_t scales_l[4];
  uint8_t qs[128];
};
// IQ3_XXS super-block of 256 (GGML block_iq3_xxs): qs[0..63] are grid indices,
// one byte per 4 elements (kIq3xxsGrid: 4 magnitudes 4..62 per entry); qs[64..95]
// are 8 little-endian uint32, one per block of 32, laid out as IQ2_XXS's second
// word: 4 x 7 sign bits (bits 7l..7l+6 for elements 8l..8l+7, parity rule of
// iq2_signs8) and a 4-bit scale w >> 28. value = d*(0.5 + (w >> 28))*0.5 * grid * sign.
struct BlockIQ3_XXS {
  uint16_t d;  // f16
  uint8_t qs[96];
};
// IQ2_XS super-block of 256 (GGML block_iq2_xs): qs = 32 little-endian uint16,
// one per 8 elements: bits 0..8 a grid index (kIq2xsGrid, 512 entries of 8
// magnitudes 8/25/43), bits 9..15 a 7-bit sign index (parity rule of
// iq2_signs8). scales[b] holds the 4-bit scales of block b's elements 0..15
// (low nibble) and 16..31 (high). value = d*(0.5 + nibble)*0.25 * grid * sign.
struct BlockIQ2_XS {
  uint16_t d;  // f16
  uint8_t qs[64];
  uint8_t scales[8];
};
// IQ1_S super-block of 256 (GGML block_iq1_s): qs[4b + l] are the low 8 bits of
// the 11-bit grid index of elements 32b + 8l .. +7 (kIq1sGrid: 2048 entries of
// 8 values in {-1, 0, 1}); the little-endian uint16 qh[b] at byte 34 + 2b holds
// their high 3 bits at bits 3l..3l+2, a 3-bit scale s at bits 12..14 and the
// delta's sign at bit 15. value = d*(2s + 1) * (grid + (bit 15 ? -1/8 : 1/8)).
struct BlockIQ1_S {
  uint16_t d;  // f16
  uint8_t qs[32];
  uint8_t qh[16];
};
// IQ1_M super-block of 256 (GGML block_iq1_m): qs as IQ1_S; qh[2b + l/2] holds,
// in its nibble l % 2, grid index l's high 3 bits and (bit 3) its delta's sign
// for the 8 elements of that index; the 4 little-endian uint16 of `scales` hold
// 3-bit scales s of the 16-element sub-blocks (sub-block k at bits 3(k%4) of word
// k/4) and, in their top nibbles, the f16 super-block scale d (iq1m_d).
// value = d*(2s + 1) * (grid + (delta bit ? -1/8 : 1/8)).
struct BlockIQ1_M {
  uint8_t qs[32];
  uint8_t qh[16];
  uint8_t scales[8];
};
// IQ3_S super-block of 256 (GGML block_iq3_s): the 9-bit grid index of elements
// 4i..4i+3 (i = 8b + m, block b) is qs[i] | ((qh[b] >> m) & 1) << 8 (kIq3sGrid: 512
// entries of 4 odd magnitudes 1..15); element e is negative where bit e % 8 of
// signs[e / 8] is set; block b's 4-bit scale s is nibble b % 2 of scales[b / 2]
// (low first). value = d*(1 + 2s) * grid * sign.
struct BlockIQ3_S {
  uint16_t d;  // f16
  uint8_t qs[64];
  uint8_t qh[8];
  uint8_t signs[32];
  uint8_t scales[4];
};
// IQ2_S super-block of 256 (GGML block_iq2_s): qs[0..31] are the low bytes of the
// 10-bit grid indices of elements 8i..8i+7 (i = 4b + l, block b), the high 2 bits
// (qh[b] >> 2l) & 3 (kIq2sGrid: 1024 entries of 8 magnitudes 8/25/43); qs[32 + i]
// holds those 8 elements' signs (bit j: element 8i + j negative); scales as
// IQ2_XS (nibble per 16 elements, low first). value = d*(0.5 + nibble)*0.25 * grid * sign.
struct BlockIQ2_S {
  uint16_t d;  // f16
  uint8_t qs[64];
  uint8_t qh[8];
  uint8_t scales[8];
};
#pragma pack(pop)

static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block");
static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block");
static_assert(sizeof(BlockMXFP4) == 17, "MXFP4 block");
static_assert(sizeof(BlockQ4_K) == 144, "Q4_K block");
static_assert(sizeof(BlockQ5_K) == 176, "Q5_K block");
static_assert(sizeof(BlockQ6_K) == 210, "Q6_K block");
static_assert(sizeof(BlockQ2_K) == 84, "Q2_K block");
static_assert(sizeof(BlockQ3_K) == 110, "Q3_K block");
static_assert(sizeof(BlockIQ2_XXS) == 66, "IQ2_XXS block");
static_assert(sizeof(BlockIQ4_XS) == 136, "IQ4_XS block");
static_assert(sizeof(BlockIQ3_XXS) == 98, "IQ3_XXS block");
static_assert(sizeof(BlockIQ2_XS) == 74, "IQ2_XS block");
static_assert(sizeof(BlockIQ1_S) == 50, "IQ1_S block");
static_assert(sizeof(BlockIQ1_M) == 56, "IQ1_M block");
static_assert(sizeof(BlockIQ3_S) == 110, "IQ3_S block");
static_assert(sizeof(BlockIQ2_S) == 82, "IQ2_S block");

// The 16 non-linear levels of IQ4_NL / IQ4_XS: format data, GGML's kvalues_iq4nl
// (ggml-common.h; gguf-py: gguf.quants.IQ4_NL.kvalues).
constexpr int8_t kIq4nlValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                     1,    13,   25,  38,  53,  69,  89,  113};

// The 6-bit scale (before the -32) of block b (0..7) of an IQ4_XS super-block.
static inline int iq4xs_scale(const BlockIQ4_XS& blk, int b) {
  return ((blk.scales_l[b / 2] >> (4 * (b % 2))) & 15) | (((blk.scales_h >> (2 * b)) & 3) << 4);
}

// E2M1 values times two (so they are small integers): the OCP MXFP4 table
// [0, .5, 1, 1.5, 2, 3, 4, 6, -0, ...] * 2.
constexpr int8_t kMxfp4x2[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

static inline PYV4_HD float bits_to_f32(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

static inline PYV4_HD uint32_t f32_to_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return bits;
}

// Exact IEEE half -> float (handles subnormals, inf, NaN).
static inline PYV4_HD float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3ff;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000 | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  return bits_to_f32(bits);
}

static inline PYV4_HD float bf16_to_f32(uint16_t h) { return bits_to_f32(static_cast<uint32_t>(h) << 16); }

// 2^(e - 128) = half of the E8M0 scale 2^(e - 127), as GGML's
// ggml_e8m0_to_fp32_half: e < 2 gives the subnormals 2^-128 and 2^-127.
static inline PYV4_HD float e8m0_to_f32_half(uint8_t e) {
  const uint32_t bits = e < 2 ? (0x00200000u << e) : (static_cast<uint32_t>(e) - 1u) << 23;
  return bits_to_f32(bits);
}

static inline PYV4_HD uint16_t load_u16(const void* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K super-block.
static inline PYV4_HD void q4k_scale_min(const uint8_t* q, int j, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// All 8 scales (byte j of *sc) and mins (byte j of *m) of a Q4_K super-block at
// once, with 32-bit mask arithmetic (same values as q4k_scale_min).
static inline PYV4_HD void q4k_scales_mins(const uint8_t* q, uint64_t* sc, uint64_t* m) {
  uint32_t a, b, c;
  std::memcpy(&a, q, 4);
  std::memcpy(&b, q + 4, 4);
  std::memcpy(&c, q + 8, 4);
  const uint32_t sc_lo = a & 0x3F3F3F3Fu, m_lo = b & 0x3F3F3F3Fu;
  const uint32_t sc_hi = (c & 0x0F0F0F0Fu) | ((a >> 2) & 0x30303030u);
  const uint32_t m_hi = ((c >> 4) & 0x0F0F0F0Fu) | ((b >> 2) & 0x30303030u);
  *sc = sc_lo | (static_cast<uint64_t>(sc_hi) << 32);
  *m = m_lo | (static_cast<uint64_t>(m_hi) << 32);
}

// The 16 six-bit scales of a Q3_K super-block (unsigned, before the -32), byte
// s of *lo (s < 8) / *hi (s >= 8). Scale s has its low 4 bits in byte s % 8
// of `q` (low nibble for s < 8, high nibble otherwise) and its high 2 bits at
// bit 2*(s / 4) of byte 8 + s % 4.
static inline void q3k_scales(const uint8_t* q, uint64_t* lo, uint64_t* hi) {
  uint32_t a, b, c;
  std::memcpy(&a, q, 4);
  std::memcpy(&b, q + 4, 4);
  std::memcpy(&c, q + 8, 4);
  const uint32_t m4 = 0x0F0F0F0Fu, m2 = 0x03030303u;
  const uint32_t s0 = (a & m4) | ((c & m2) << 4), s1 = (b & m4) | (((c >> 2) & m2) << 4);
  const uint32_t s2 = ((a >> 4) & m4) | (((c >> 4) & m2) << 4);
  const uint32_t s3 = ((b >> 4) & m4) | (((c >> 6) & m2) << 4);
  *lo = s0 | (static_cast<uint64_t>(s1) << 32);
  *hi = s2 | (static_cast<uint64_t>(s3) << 32);
}

// IQ2_XXS: the 8 sign bits (bit j set = element j negative) of a 7-bit sign
// index: the index itself, plus its parity as bit 7 (an even count of minus signs).
static inline uint32_t iq2_signs8(uint32_t idx7) {
  return idx7 | (static_cast<uint32_t>(__builtin_parity(idx7)) << 7);
}

// The signs of the 128 IQ2_XXS sign indices as bytes: byte j of entry i is -1
// where element j is negative (iq2_signs8(i)), +1 elsewhere (vpsignb's operand);
// derived at compile time from the parity rule.
struct Iq2Signs {
  uint64_t m[128];
};
static constexpr Iq2Signs make_iq2_signs() {
  Iq2Signs t{};
  for (uint32_t i = 0; i < 128; ++i) {
    uint32_t s = i, par = 0;
    for (uint32_t b = i; b; b >>= 1) par ^= b & 1;
    s |= par << 7;
    for (int j = 0; j < 8; ++j) t.m[i] |= uint64_t{(s >> j) & 1 ? 0xFFu : 0x01u} << (8 * j);
  }
  return t;
}
static constexpr Iq2Signs kIq2Signs = make_iq2_signs();

// The 32 sign bits of IQ2_XXS group word b (bits 8l..8l+7 for grid index l).
static inline uint32_t iq2xxs_signs32(uint32_t b) {
  return iq2_signs8(b & 127) | (iq2_signs8((b >> 7) & 127) << 8) |
         (iq2_signs8((b >> 14) & 127) << 16) | (iq2_signs8((b >> 21) & 127) << 24);
}

// The f16 bits of IQ1_M's super-block scale: the top nibbles of its 4 scale
// words, word i's giving bits 4i..4i+3.
static inline uint16_t iq1m_d(const BlockIQ1_M& blk) {
  uint16_t h = 0;
  for (int i = 0; i < 4; ++i) h |= static_cast<uint16_t>((load_u16(blk.scales + 2 * i) >> 12) << (4 * i));
  return h;
}

// The 3-bit scale of 16-element sub-block k (0..15) of an IQ1_M super-block.
static inline int iq1m_scale(const BlockIQ1_M& blk, int k) {
  return (load_u16(blk.scales + 2 * (k / 4)) >> (3 * (k % 4))) & 7;
}

}  // namespace qblocks
}  // namespace pyv4
