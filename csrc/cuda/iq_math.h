// The grid-coded i-quants for cuda/block_math.h: their grids as device copies,
// and per group of 32 (block b of a super-block sb) the two half scales, one
// signed code, or the 8 words of 4 codes. __host__ __device__ like block_math.h:
// tests/test_cuda_host.py runs this code on the CPU against the scalar decode
// (csrc/quant/dequant.cpp), bit for bit. Each value is d[h] * code with one
// rounding, as the scalar decode's d * magnitude * sign (a sign flip is exact);
// IQ1_S / IQ1_M's grid value + -1/8 becomes code 8 * value +- 1 with d / 8 (d / 8
// is exact, so the product rounds the same real number once).
#pragma once

#include <cstdint>

#include "quant/blocks.h"
#include "quant/ggml_types.h"
#include "quant/iq1s_grid.h"
#include "quant/iq2s_grid.h"
#include "quant/iq2xs_grid.h"
#include "quant/iq2xxs_grid.h"
#include "quant/iq3s_grid.h"
#include "quant/iq3xxs_grid.h"

namespace pyv4 {
namespace cudamath {

// Byte helpers (block_math.h uses them too).
static inline PYV4_HD uint32_t load_u32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
         static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
}

static inline PYV4_HD int32_t pack4(int a, int b, int c, int d) {
  return static_cast<int32_t>((static_cast<uint32_t>(a) & 255u) | (static_cast<uint32_t>(b) & 255u) << 8 |
                              (static_cast<uint32_t>(c) & 255u) << 16 |
                              (static_cast<uint32_t>(d) & 255u) << 24);
}

#ifdef __CUDACC__
// The grids (quant/iq*_grid.h) for device code, one copy per translation unit;
// lanes of a warp index them at random, so they live in global memory (cached)
// rather than in constant memory, which serialises them.
static __device__ const uint64_t kIq2xxsGridDevice[256] = {PYV4_IQ2XXS_GRID_ENTRIES};
static __device__ const uint64_t kIq2xsGridDevice[512] = {PYV4_IQ2XS_GRID_ENTRIES};
static __device__ const uint64_t kIq2sGridDevice[1024] = {PYV4_IQ2S_GRID_ENTRIES};
static __device__ const uint32_t kIq3xxsGridDevice[256] = {PYV4_IQ3XXS_GRID_ENTRIES};
static __device__ const uint32_t kIq3sGridDevice[512] = {PYV4_IQ3S_GRID_ENTRIES};
static __device__ const uint64_t kIq1sGridDevice[2048] = {PYV4_IQ1S_GRID_ENTRIES};
#endif

#ifdef __CUDA_ARCH__
#define PYV4_IQ_GRID(name, i) name##Device[i]
#else
#define PYV4_IQ_GRID(name, i) qblocks::name[i]
#endif

static inline PYV4_HD uint64_t iq2xxs_grid(unsigned i) { return PYV4_IQ_GRID(kIq2xxsGrid, i); }

// Whether element j (0..7) of an IQ2 / IQ3_XXS sign index (7 bits, the 8th sign
// is their parity: an even count of minus signs) is negative (qblocks::iq2_signs8).
static inline PYV4_HD bool iq2_negative(uint32_t idx7, int j) {
#ifdef __CUDA_ARCH__
  const uint32_t parity = __popc(idx7) & 1u;
#else
  const uint32_t parity = static_cast<uint32_t>(__builtin_parity(idx7));
#endif
  return ((idx7 | parity << 7) >> j) & 1u;
}

// The i-quants decoded here, and their super-block bytes (0: another type).
static constexpr PYV4_HD int grid_iquant_bytes(GGMLType t) {
  using namespace qblocks;
  return static_cast<int>(t == GGMLType::IQ3_XXS ? sizeof(BlockIQ3_XXS) : t == GGMLType::IQ2_XS ? sizeof(BlockIQ2_XS)
                          : t == GGMLType::IQ3_S ? sizeof(BlockIQ3_S)    : t == GGMLType::IQ2_S  ? sizeof(BlockIQ2_S)
                          : t == GGMLType::IQ1_S ? sizeof(BlockIQ1_S)    : t == GGMLType::IQ1_M  ? sizeof(BlockIQ1_M)
                                                                                                : 0);
}

// The 3-bit scale of 16-element sub-block k of an IQ1_M super-block (scales at
// byte 48: qblocks::iq1m_scale), and its f16 d (the scale words' top nibbles).
static inline PYV4_HD int iq1m_scale(const uint8_t* sb, int k) {
  return (qblocks::load_u16(sb + 48 + 2 * (k / 4)) >> (3 * (k % 4))) & 7;
}
static inline PYV4_HD float iq1m_d(const uint8_t* sb) {
  uint16_t h = 0;
  for (int i = 0; i < 4; ++i) h |= static_cast<uint16_t>((qblocks::load_u16(sb + 48 + 2 * i) >> 12) << (4 * i));
  return qblocks::f16_to_f32(h);
}

// d[0], d[1]: the scales of elements 0..15 and 16..31 of block b of super-block sb.
static inline PYV4_HD void iq_group_scale(GGMLType t, const uint8_t* sb, int b, float* d) {
  using qblocks::f16_to_f32;
  using qblocks::load_u16;
  switch (t) {
    case GGMLType::IQ3_XXS: {
      const uint32_t sg = load_u32(sb + 66 + 4 * b);
      d[0] = d[1] = f16_to_f32(load_u16(sb)) * (0.5f + static_cast<float>(sg >> 28)) * 0.5f;
      return;
    }
    case GGMLType::IQ3_S:
      d[0] = d[1] = f16_to_f32(load_u16(sb)) * static_cast<float>(1 + 2 * ((sb[106 + b / 2] >> (4 * (b % 2))) & 15));
      return;
    case GGMLType::IQ1_S: {
      const uint16_t qh = load_u16(sb + 34 + 2 * b);
      d[0] = d[1] = f16_to_f32(load_u16(sb)) * static_cast<float>(2 * ((qh >> 12) & 7) + 1) * 0.125f;
      return;
    }
    case GGMLType::IQ1_M: {
      const float d16 = iq1m_d(sb);
      for (int h = 0; h < 2; ++h) d[h] = d16 * static_cast<float>(2 * iq1m_scale(sb, 2 * b + h) + 1) * 0.125f;
      return;
    }
    default: {  // IQ2_XS (scales at 66), IQ2_S (at 74): nibble h of the block's scale byte
      const int at = t == GGMLType::IQ2_XS ? 66 : 74;
      const float d16 = f16_to_f32(load_u16(sb));
      for (int h = 0; h < 2; ++h) d[h] = d16 * (0.5f + static_cast<float>((sb[at + b] >> (4 * h)) & 15)) * 0.25f;
    }
  }
}

// The signed code of element e (0..31) of block b of super-block sb.
static inline PYV4_HD int iq_group_code(GGMLType t, const uint8_t* sb, int b, int e) {
  using qblocks::load_u16;
  switch (t) {
    case GGMLType::IQ3_XXS: {  // grid index bytes at 2 + 8b, sign word at 66 + 4b
      const int mag = static_cast<int>((PYV4_IQ_GRID(kIq3xxsGrid, sb[2 + 8 * b + e / 4]) >> (8 * (e % 4))) & 255);
      return iq2_negative((load_u32(sb + 66 + 4 * b) >> (7 * (e / 8))) & 127u, e % 8) ? -mag : mag;
    }
    case GGMLType::IQ2_XS: {  // index word l = 4b + e / 8: 9-bit grid index, 7-bit sign index
      const uint32_t w = load_u16(sb + 2 + 2 * (4 * b + e / 8));
      const int mag = static_cast<int>((PYV4_IQ_GRID(kIq2xsGrid, w & 511) >> (8 * (e % 8))) & 255);
      return iq2_negative(w >> 9, e % 8) ? -mag : mag;
    }
    case GGMLType::IQ3_S: {  // qs at 2, qh at 66, signs at 74
      const unsigned idx = sb[2 + 8 * b + e / 4] | ((sb[66 + b] >> (e / 4)) & 1u) << 8;
      const int mag = static_cast<int>((PYV4_IQ_GRID(kIq3sGrid, idx) >> (8 * (e % 4))) & 255);
      return (sb[74 + 4 * b + e / 8] >> (e % 8)) & 1 ? -mag : mag;
    }
    case GGMLType::IQ2_S: {  // index i = 4b + e / 8: low byte at 2 + i, sign byte at 34 + i, high bits qh at 66
      const int i = 4 * b + e / 8;
      const unsigned idx = sb[2 + i] | ((sb[66 + b] >> (2 * (i % 4))) & 3u) << 8;
      const int mag = static_cast<int>((PYV4_IQ_GRID(kIq2sGrid, idx) >> (8 * (e % 8))) & 255);
      return (sb[34 + i] >> (e % 8)) & 1 ? -mag : mag;
    }
    case GGMLType::IQ1_S: {  // qs at 2, qh words at 34; the grid bytes are value + 1
      const uint16_t qh = load_u16(sb + 34 + 2 * b);
      const int l = e / 8;
      const unsigned idx = sb[2 + 4 * b + l] | ((qh >> (3 * l)) & 7u) << 8;
      const int v = static_cast<int>((PYV4_IQ_GRID(kIq1sGrid, idx) >> (8 * (e % 8))) & 255) - 1;
      return 8 * v + (qh & 0x8000 ? -1 : 1);
    }
    default: {  // IQ1_M: qs at 0, qh at 32 (nibble per grid index: high bits, delta sign at bit 3)
      const int l = 4 * b + e / 8;
      const unsigned nib = (sb[32 + l / 2] >> (4 * (l % 2))) & 15u;
      const int v = static_cast<int>((PYV4_IQ_GRID(kIq1sGrid, sb[l] | (nib & 7u) << 8) >> (8 * (e % 8))) & 255) - 1;
      return 8 * v + (nib & 8 ? -1 : 1);
    }
  }
}

// The 4 codes of bytes 4h..4h+3 of a grid entry (8 magnitudes, or IQ1's
// values + 1), one per byte of the word: mag * (bit i of neg ? -1 : 1) for
// mul = 1, or 8 * (byte - 1) + delta for IQ1's (mul = 8).
static inline PYV4_HD int32_t entry_word(uint64_t entry, int h, uint32_t neg, int mul, int delta) {
  int c[4];
  for (int i = 0; i < 4; ++i) {
    const int v = static_cast<int>((entry >> (8 * (4 * h + i))) & 255u);
    c[i] = mul == 1 ? ((neg >> (4 * h + i)) & 1u ? -v : v) : mul * (v - 1) + delta;
  }
  return pack4(c[0], c[1], c[2], c[3]);
}

// Words k = 0..7 of block b's codes (codes 4k..4k+3, one per byte): one grid
// load per entry, as load_group's word-wise decode of the other types.
static inline PYV4_HD void iq_group_words(GGMLType t, const uint8_t* sb, int b, int32_t* w) {
  using qblocks::load_u16;
  switch (t) {
    case GGMLType::IQ3_XXS: {  // 4 magnitudes an entry: one entry a word
      const uint32_t sg = load_u32(sb + 66 + 4 * b);
      for (int k = 0; k < 8; ++k) {
        const uint32_t idx7 = (sg >> (7 * (k / 2))) & 127u;
        uint32_t neg = 0;
        for (int i = 0; i < 4; ++i) neg |= static_cast<uint32_t>(iq2_negative(idx7, 4 * (k % 2) + i)) << i;
        w[k] = entry_word(PYV4_IQ_GRID(kIq3xxsGrid, sb[2 + 8 * b + k]), 0, neg, 1, 0);
      }
      return;
    }
    case GGMLType::IQ3_S: {
      for (int k = 0; k < 8; ++k) {
        const unsigned idx = sb[2 + 8 * b + k] | ((sb[66 + b] >> k) & 1u) << 8;
        const uint32_t neg = (sb[74 + 4 * b + k / 2] >> (4 * (k % 2))) & 15u;
        w[k] = entry_word(PYV4_IQ_GRID(kIq3sGrid, idx), 0, neg, 1, 0);
      }
      return;
    }
    default:  // 8 values an entry: two words
      for (int l = 0; l < 4; ++l) {
        uint64_t entry;
        uint32_t neg = 0;
        int mul = 1, delta = 0;
        if (t == GGMLType::IQ2_XS) {
          const uint32_t x = load_u16(sb + 2 + 2 * (4 * b + l));
          entry = PYV4_IQ_GRID(kIq2xsGrid, x & 511);
          for (int j = 0; j < 8; ++j) neg |= static_cast<uint32_t>(iq2_negative(x >> 9, j)) << j;
        } else if (t == GGMLType::IQ2_S) {
          const int i = 4 * b + l;
          entry = PYV4_IQ_GRID(kIq2sGrid, sb[2 + i] | ((sb[66 + b] >> (2 * l)) & 3u) << 8);
          neg = sb[34 + i];
        } else if (t == GGMLType::IQ1_S) {
          const uint16_t qh = load_u16(sb + 34 + 2 * b);
          entry = PYV4_IQ_GRID(kIq1sGrid, sb[2 + 4 * b + l] | ((qh >> (3 * l)) & 7u) << 8);
          mul = 8, delta = qh & 0x8000 ? -1 : 1;
        } else {  // IQ1_M
          const int i = 4 * b + l;
          const unsigned nib = (sb[32 + i / 2] >> (4 * (i % 2))) & 15u;
          entry = PYV4_IQ_GRID(kIq1sGrid, sb[i] | (nib & 7u) << 8);
          mul = 8, delta = nib & 8 ? -1 : 1;
        }
        w[2 * l] = entry_word(entry, 0, neg, mul, delta);
        w[2 * l + 1] = entry_word(entry, 1, neg, mul, delta);
      }
  }
}

}  // namespace cudamath
}  // namespace pyv4
