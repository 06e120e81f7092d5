// Scalar reference decode of every supported weight type: plain, readable code
// that matches gguf.quants.dequantize bit for bit (this is the oracle the fast
// kernels are tested against). Compiled for the x86-64 baseline, so there is
// no FMA contraction: each product and difference is rounded like numpy's.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <cstring>
#include <string>

#include "common/error.h"
#include "quant/blocks.h"
#include "quant/iq1s_grid.h"
#include "quant/iq2s_grid.h"
#include "quant/iq2xs_grid.h"
#include "quant/iq2xxs_grid.h"
#include "quant/iq3s_grid.h"
#include "quant/iq3xxs_grid.h"
#include "quant/matmul.h"

namespace pyv4 {

using namespace qblocks;

namespace {

constexpr int8_t kQ4_0Levels[16] = {-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7};

// The 32-element blocks whose 16 bytes hold element j's code (low nibble) and
// element j + 16's (high): Q4_0, IQ4_NL, MXFP4. value = scale(block) * levels[code].
template <class Blk, class Scale>
void nibble_blocks(const void* src, float* dst, int64_t n, const int8_t (&levels)[16], Scale scale) {
  const Blk* b = static_cast<const Blk*>(src);
  for (int64_t k = 0; k < n / kQK; ++k, dst += kQK) {
    const float d = scale(b[k]);
    for (int j = 0; j < kQK / 2; ++j) {
      dst[j] = d * static_cast<float>(levels[b[k].qs[j] & 0x0F]);
      dst[j + 16] = d * static_cast<float>(levels[b[k].qs[j] >> 4]);
    }
  }
}

}  // namespace

void dequantize_row(GGMLType type, const void* src, float* dst, int64_t n) {
  const int64_t bs = traits(type).block_size;
  if (n % bs != 0)
    throw FormatError(std::string("dequantize_row: ") + type_name(type) + " length " +
                      std::to_string(n) + " is not a multiple of the block size");
  switch (type) {
    case GGMLType::F32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case GGMLType::F16: {
      const uint8_t* s = static_cast<const uint8_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(load_u16(s + 2 * i));
      return;
    }
    case GGMLType::BF16: {
      const uint8_t* s = static_cast<const uint8_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(load_u16(s + 2 * i));
      return;
    }
    case GGMLType::Q8_0: {
      const BlockQ8_0* b = static_cast<const BlockQ8_0*>(src);
      for (int64_t k = 0; k < n / kQK; ++k, dst += kQK) {
        const float d = f16_to_f32(b[k].d);
        for (int i = 0; i < kQK; ++i) dst[i] = static_cast<float>(b[k].qs[i]) * d;
      }
      return;
    }
    case GGMLType::Q4_0:
    case GGMLType::IQ4_NL:  // one block layout, f16 d
      return nibble_blocks<BlockQ4_0>(src, dst, n, type == GGMLType::Q4_0 ? kQ4_0Levels : kIq4nlValues,
                                      [](const BlockQ4_0& b) { return f16_to_f32(b.d); });
    case GGMLType::MXFP4:
      return nibble_blocks<BlockMXFP4>(src, dst, n, kMxfp4x2,
                                       [](const BlockMXFP4& b) { return e8m0_to_f32_half(b.e); });
    case GGMLType::Q4_K: {
      const BlockQ4_K* b = static_cast<const BlockQ4_K*>(src);
      for (int64_t k = 0; k < n / kQK_K; ++k) {
        const float d = f16_to_f32(b[k].d), dmin = f16_to_f32(b[k].dmin);
        const uint8_t* q = b[k].qs;
        for (int c = 0; c < 4; ++c, q += 32) {
          uint8_t sc, m;
          q4k_scale_min(b[k].scales, 2 * c, &sc, &m);
          const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
          q4k_scale_min(b[k].scales, 2 * c + 1, &sc, &m);
          const float d2 = d * static_cast<float>(sc), m2 = dmin * static_cast<float>(m);
          for (int l = 0; l < 32; ++l) *dst++ = d1 * static_cast<float>(q[l] & 0x0F) - m1;
          for (int l = 0; l < 32; ++l) *dst++ = d2 * static_cast<float>(q[l] >> 4) - m2;
        }
      }
      return;
    }
    case GGMLType::Q5_K: {
      const BlockQ5_K* b = static_cast<const BlockQ5_K*>(src);
      for (int64_t k = 0; k < n / kQK_K; ++k) {
        const float d = f16_to_f32(b[k].d), dmin = f16_to_f32(b[k].dmin);
        for (int j = 0; j < 8; ++j) {
          uint8_t sc, m;
          q4k_scale_min(b[k].scales, j, &sc, &m);
          const float dl = d * static_cast<float>(sc), ml = dmin * static_cast<float>(m);
          for (int l = 0; l < 32; ++l) {
            const int q = ((b[k].qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 15) | (((b[k].qh[l] >> j) & 1) << 4);
            *dst++ = dl * static_cast<float>(q) - ml;
          }
        }
      }
      return;
    }
    case GGMLType::Q6_K: {
      const BlockQ6_K* b = static_cast<const BlockQ6_K*>(src);
      for (int64_t k = 0; k < n / kQK_K; ++k) {
        const float d = f16_to_f32(b[k].d);
        for (int e = 0; e < kQK_K; ++e) {
          const int n128 = e / 128, j = (e % 128) / 32, l = e % 32;
          const int lo = (b[k].ql[64 * n128 + 32 * (j % 2) + l] >> (4 * (j / 2))) & 15;
          const int hi = (b[k].qh[32 * n128 + l] >> (2 * j)) & 3;
          const float dl = d * static_cast<float>(b[k].scales[e / 16]);
          *dst++ = dl * static_cast<float>((lo | (hi << 4)) - 32);
        }
      }
      return;
    }
    case GGMLType::Q2_K: {
      const BlockQ2_K* b = static_cast<const BlockQ2_K*>(src);
      for (int64_t k = 0; k < n / kQK_K; ++k) {
        const float d = f16_to_f32(b[k].d), dmin = f16_to_f32(b[k].dmin);
        for (int e = 0; e < kQK_K; ++e) {
          const int n128 = e / 128, j = (e % 128) / 32, l = e % 32, s = e / 16;
          const int code = (b[k].qs[32 * n128 + l] >> (2 * j)) & 3;
          const float dl = d * static_cast<float>(b[k].scales[s] & 15);
          const float ml = dmin * static_cast<float>(b[k].scales[s] >> 4);
          *dst++ = dl * static_cast<float>(code) - ml;
        }
      }
      return;
    }
    case GGMLType::Q3_K: {
      const BlockQ3_K* b = static_cast<const BlockQ3_K*>(src);
      for (int64_t k = 0; k < n / kQK_K; ++k) {
        const float d = f16_to_f32(b[k].d);
        uint8_t sc[16];
        uint64_t lo, hi;
        q3k_scales(b[k].scales, &lo, &hi);
        std::memcpy(sc, &lo, 8);
        std::memcpy(sc + 8, &hi, 8);
        for (int e = 0; e < kQK_K; ++e) {
          const int n128 = e / 128, j = (e % 128) / 32, l = e % 32, s = e / 16;
          const int low = (b[k].qs[32 * n128 + l] >> (2 * j)) & 3;
          const int high = (b[k].hmask[l] >> (4 * n128 + j)) & 1;
          const float dl = d * static_cast<float>(sc[s] - 32);
          *dst++ = dl * static_cast<float>(low + 4 * high - 4);
        }
      }
      return;
    }
    case GGMLType::IQ2_XXS: {
      const BlockIQ2_XXS* b = static_cast<const BlockIQ2_XXS*>(src);
      for (int64_t k = 0; k < n / kQK_K; ++k) {
        const float d = f16_to_f32(b[k].d);
        for (int g = 0; g < 8; ++g) {
          uint32_t idx, sg;
          std::memcpy(&idx, b[k].qs + 8 * g, 4);
          std::memcpy(&sg, b[k].qs + 8 * g + 4, 4);
          const float db = d * (0.5f + static_cast<float>(sg >> 28)) * 0.25f;
          const uint32_t signs = iq2xxs_signs32(sg);
          for (int e = 0; e < 32; ++e) {
            const uint64_t entry = kIq2xxsGrid[(idx >> (8 * (e / 8))) & 255];
            const float mag = static_cast<float>((entry >> (8 * (e % 8))) & 255);
            *dst++ = db * mag * ((signs >> e) & 1 ? -1.0f : 1.0f);
          }
        }
      }
      return;
    }
    case GGMLType::IQ4_XS: {
      const BlockIQ4_XS* b = static_cast<const BlockIQ4_XS*>(src);
      for (int64_t k = 0; k < n / kQK_K; ++k) {
        const float d = f16_to_f32(b[k].d);
        for (int ib = 0; ib < 8; ++ib, dst += 32) {
          const float dl = d * static_cast<float>(iq4xs_scale(b[k], ib) - 32);
          const uint8_t* q = b[k].qs + 16 * ib;
          for (int j = 0; j < 16; ++j) {
            dst[j] = dl * static_cast<float>(kIq4nlValues[q[j] & 15]);
            dst[j + 16] = dl * static_cast<float>(kIq4nlValues[q[j] >> 4]);
          }
        }
      }
      return;
    }
    case GGMLType::IQ3_XXS: {
      const BlockIQ3_XXS* b = static_cast<const BlockIQ3_XXS*>(src);
      for (int64_t k = 0; k < n / kQK_K; ++k) {
        const float d = f16_to_f32(b[k].d);
        for (int g = 0; g < 8; ++g) {
          uint32_t sg;
          std::memcpy(&sg, b[k].qs + 64 + 4 * g, 4);
          const float db = d * (0.5f + static_cast<float>(sg >> 28)) * 0.5f;
          const uint32_t signs = iq2xxs_signs32(sg);
          for (int e = 0; e < 32; ++e) {
            const uint32_t entry = kIq3xxsGrid[b[k].qs[8 * g + e / 4]];
            const float mag = static_cast<float>((entry >> (8 * (e % 4))) & 255);
            *dst++ = db * mag * ((signs >> e) & 1 ? -1.0f : 1.0f);
          }
        }
      }
      return;
    }
    case GGMLType::IQ2_XS: {
      const BlockIQ2_XS* b = static_cast<const BlockIQ2_XS*>(src);
      for (int64_t k = 0; k < n / kQK_K; ++k) {
        const float d = f16_to_f32(b[k].d);
        for (int l = 0; l < 32; ++l) {  // 8 elements per index word
          const uint16_t w = load_u16(b[k].qs + 2 * l);
          const int nib = (b[k].scales[l / 4] >> (4 * ((l % 4) / 2))) & 15;
          const float db = d * (0.5f + static_cast<float>(nib)) * 0.25f;
          const uint64_t entry = kIq2xsGrid[w & 511];
          const uint32_t signs = iq2_signs8(w >> 9);
          for (int e = 0; e < 8; ++e) {
            const float mag = static_cast<float>((entry >> (8 * e)) & 255);
            *dst++ = db * mag * ((signs >> e) & 1 ? -1.0f : 1.0f);
          }
        }
      }
      return;
    }
    case GGMLType::IQ1_S: {
      const BlockIQ1_S* b = static_cast<const BlockIQ1_S*>(src);
      for (int64_t k = 0; k < n / kQK_K; ++k) {
        const float d = f16_to_f32(b[k].d);
        for (int ib = 0; ib < 8; ++ib) {
          const uint16_t qh = load_u16(b[k].qh + 2 * ib);
          const float dl = d * static_cast<float>(2 * ((qh >> 12) & 7) + 1);
          const float delta = qh & 0x8000 ? -0.125f : 0.125f;
          for (int l = 0; l < 4; ++l) {
            const uint64_t entry = kIq1sGrid[b[k].qs[4 * ib + l] | (((qh >> (3 * l)) & 7) << 8)];
            for (int e = 0; e < 8; ++e)
              *dst++ = dl * (static_cast<float>(static_cast<int>((entry >> (8 * e)) & 255) - 1) + delta);
          }
        }
      }
      return;
    }
    case GGMLType::IQ1_M: {
      const BlockIQ1_M* b = static_cast<const BlockIQ1_M*>(src);
      for (int64_t k = 0; k < n / kQK_K; ++k) {
        const float d = f16_to_f32(iq1m_d(b[k]));
        for (int l = 0; l < 32; ++l) {  // grid index l: elements 8l..8l+7, sub-block l / 2
          const int nib = (b[k].qh[l / 2] >> (4 * (l % 2))) & 15;
          const float dl = d * static_cast<float>(2 * iq1m_scale(b[k], l / 2) + 1);
          const float delta = nib & 8 ? -0.125f : 0.125f;
          const uint64_t entry = kIq1sGrid[b[k].qs[l] | ((nib & 7) << 8)];
          for (int e = 0; e < 8; ++e)
            *dst++ = dl * (static_cast<float>(static_cast<int>((entry >> (8 * e)) & 255) - 1) + delta);
        }
      }
      return;
    }
    case GGMLType::IQ3_S: {
      const BlockIQ3_S* b = static_cast<const BlockIQ3_S*>(src);
      for (int64_t k = 0; k < n / kQK_K; ++k) {
        const float d = f16_to_f32(b[k].d);
        for (int ib = 0; ib < 8; ++ib) {
          const int s = (b[k].scales[ib / 2] >> (4 * (ib % 2))) & 15;
          const float db = d * static_cast<float>(1 + 2 * s);
          for (int e = 0; e < 32; ++e) {
            const int i = 8 * ib + e / 4;  // grid index i: elements 4i..4i+3
            const uint32_t entry = kIq3sGrid[b[k].qs[i] | (((b[k].qh[ib] >> (e / 4)) & 1) << 8)];
            const float mag = static_cast<float>((entry >> (8 * (e % 4))) & 255);
            const bool neg = (b[k].signs[4 * ib + e / 8] >> (e % 8)) & 1;
            *dst++ = db * mag * (neg ? -1.0f : 1.0f);
          }
        }
      }
      return;
    }
    case GGMLType::IQ2_S: {
      const BlockIQ2_S* b = static_cast<const BlockIQ2_S*>(src);
      for (int64_t k = 0; k < n / kQK_K; ++k) {
        const float d = f16_to_f32(b[k].d);
        for (int i = 0; i < 32; ++i) {  // grid index i: elements 8i..8i+7, sub-block i / 2
          const int nib = (b[k].scales[i / 4] >> (4 * ((i % 4) / 2))) & 15;
          const float db = d * (0.5f + static_cast<float>(nib)) * 0.25f;
          const uint64_t entry = kIq2sGrid[b[k].qs[i] | (((b[k].qh[i / 4] >> (2 * (i % 4))) & 3) << 8)];
          const uint8_t signs = b[k].qs[32 + i];
          for (int e = 0; e < 8; ++e) {
            const float mag = static_cast<float>((entry >> (8 * e)) & 255);
            *dst++ = db * mag * ((signs >> e) & 1 ? -1.0f : 1.0f);
          }
        }
      }
      return;
    }
    default:
      throw FormatError(std::string("dequantize_row: ") + type_name(type) +
                        " is not a weight type");
  }
}

}  // namespace pyv4
