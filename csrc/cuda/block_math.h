// Block decode and index math of the CUDA kernels, as __host__ __device__
// functions: the kernels (csrc/cuda/*.cu, nvcc) and the host-side checks
// (csrc/python/bind_cuda.cpp, the C++ compiler, tested on any CPU by
// tests/test_cuda_host.py) run this same code. Block layouts are the file's
// (csrc/quant/blocks.h, spec §10); the GPU reads weights in GGML rows.
//
// Weights are read in groups of 32 elements: one Q8_0 / Q4_0 / IQ4_NL / MXFP4 block,
// one sub-block of a Q4_K / Q5_K / IQ2_XXS / IQ4_XS super-block, or two of a Q2_K /
// Q3_K / Q6_K one (scales per 16). A group is 32 signed int8 codes, each half h of 16
// with its own scale: value_i = d_h * code_i - m_h. With activations quantized
// per group of 32 like the CPU's integer kernels (x_i ~= dx * q_i,
// csrc/quant/kernels.h)
//     sum_i value_i x_i = dx * sum_h (d_h * sum_{i in h} code_i q_i - m_h * sum_{i in h} q_i)
// and the integer sums are two dp4a on packed words per half. The codes of the
// IQ types are their grid / level values (IQ2_XXS: +-8, 25, 43 with the signs
// applied; IQ4_NL / IQ4_XS: the 16 non-linear levels; the other grid i-quants in
// cuda/iq_math.h), so their dots are integer too.
#pragma once

#include <cmath>
#include <cstdint>

#include "cuda/iq_math.h"
#include "quant/blocks.h"
#include "quant/ggml_types.h"

namespace pyv4 {
namespace cudamath {

constexpr int kGroup = 32;

// One group of weights: codes packed 4 per word in element order (byte k of
// word j is element 4j + k), value_i = d[i / 16] * code_i - m[i / 16].
struct Group {
  int32_t w[8];
  float d[2], m[2];
};

// A group of quantized activations: x_i ~= dx * q_i, qsum[h] = the sum of q_i
// over half h (elements 16h .. 16h + 15).
struct ActGroup {
  int32_t q[8];
  float dx;
  int32_t qsum[2];
};

// qblocks::kIq4nlValues packed 8 per word at compile time: scalar constants,
// which device code may read (it cannot index the host array).
constexpr uint64_t pack_levels(int first) {
  uint64_t w = 0;
  for (int k = 0; k < 8; ++k) w |= static_cast<uint64_t>(static_cast<uint8_t>(qblocks::kIq4nlValues[first + k])) << (8 * k);
  return w;
}
constexpr uint64_t kIq4LevelsLo = pack_levels(0), kIq4LevelsHi = pack_levels(8);

// The IQ4_NL / IQ4_XS level of a 4-bit code.
static inline PYV4_HD int iq4nl_level(unsigned code) {
  return static_cast<int8_t>(((code < 8 ? kIq4LevelsLo : kIq4LevelsHi) >> (8 * (code & 7))) & 255u);
}

// Twice the E2M1 value of a 4-bit code (csrc/quant/blocks.h kMxfp4x2, whose
// table device code cannot index): magnitudes 0,1,2,3 then 4,6,8,12.
static inline PYV4_HD int e2m1x2(unsigned code) {
  const int mag = code & 7;
  const int v = mag < 4 ? mag : (2 + (mag & 1)) << ((mag >> 1) - 1);
  return (code & 8) ? -v : v;
}

// acc + the dot of the four signed bytes of a and b (dp4a on the GPU).
static inline PYV4_HD int32_t dot4(int32_t a, int32_t b, int32_t acc) {
#ifdef __CUDA_ARCH__
  return __dp4a(a, b, acc);
#else
  for (int k = 0; k < 4; ++k)
    acc += static_cast<int8_t>(static_cast<uint32_t>(a) >> (8 * k)) *
           static_cast<int8_t>(static_cast<uint32_t>(b) >> (8 * k));
  return acc;
#endif
}

// a * b - c rounded twice, as the CPU's scalar decode does (nvcc would
// otherwise contract it into one fma and differ in the last bit).
static inline PYV4_HD float mul_sub(float a, float b, float c) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(__fmul_rn(a, b), c);
#else
  return a * b - c;
#endif
}

static constexpr PYV4_HD bool is_group_type(GGMLType t) {
  return t == GGMLType::Q8_0 || t == GGMLType::Q4_0 || t == GGMLType::IQ4_NL || t == GGMLType::MXFP4 ||
         t == GGMLType::Q4_K || t == GGMLType::Q5_K || t == GGMLType::Q6_K || t == GGMLType::Q2_K ||
         t == GGMLType::Q3_K || t == GGMLType::IQ2_XXS || t == GGMLType::IQ4_XS || grid_iquant_bytes(t) > 0;
}

// The code of element e (0..31) of 4-bit group bytes qs: low nibbles hold
// elements 0..15, high nibbles 16..31 (Q4_0, IQ4_NL, MXFP4).
static inline PYV4_HD unsigned nibble_lo_hi(const uint8_t* qs, int e) {
  return e < 16 ? qs[e] & 15u : qs[e - 16] >> 4;
}

// Codes 4k .. 4k + 3 (one per byte) of 16 bytes of nibbles that hold elements
// 0..15 in their low halves and 16..31 in their high ones (nibble_lo_hi, a word at a time).
static inline PYV4_HD uint32_t nibble_word(const uint8_t* qs, int k) {
  return (load_u32(qs + 4 * (k % 4)) >> (k < 4 ? 0 : 4)) & 0x0F0F0F0Fu;
}

// The super-block of 256 that holds group g (g % 8 is the group's place in it).
template <class Block>
static inline PYV4_HD const uint8_t* super_of(const uint8_t* row, int64_t g) {
  return row + static_cast<int64_t>(sizeof(Block)) * (g / 8);
}

// The 6-bit scale s (0..15, before the -32) of a Q3_K super-block's scale
// bytes q: low 4 bits in byte s % 8 (low nibble for s < 8), high 2 bits at bit
// 2 * (s / 4) of byte 8 + s % 4 (qblocks::q3k_scales, one at a time).
static inline PYV4_HD int q3k_scale(const uint8_t* q, int s) {
  const int low = (s < 8 ? q[s] : q[s - 8] >> 4) & 15;
  return low | ((q[8 + s % 4] >> (2 * (s / 4))) & 3) << 4;
}

// d and m of the two halves of a group (value = d[h] * code - m[h]); codes as
// described in load_group. Q2_K / Q3_K group g covers elements 128n + 32j + l
// (n = (g % 8) / 4, j = g % 4, l < 32) of its super-block: sub-blocks 8n + 2j
// and 8n + 2j + 1 (qblocks::BlockQ2_K).
static inline PYV4_HD void group_scale(GGMLType t, const uint8_t* row, int64_t g, float* d, float* m) {
  using namespace qblocks;
  m[0] = m[1] = 0.0f;
  if (const int bytes = grid_iquant_bytes(t)) return iq_group_scale(t, row + bytes * (g / 8), static_cast<int>(g % 8), d);
  switch (t) {
    case GGMLType::Q8_0:
      d[0] = f16_to_f32(load_u16(row + sizeof(BlockQ8_0) * g));
      break;
    case GGMLType::Q4_0:
    case GGMLType::IQ4_NL:  // the same block layout
      d[0] = f16_to_f32(load_u16(row + sizeof(BlockQ4_0) * g));
      break;
    case GGMLType::MXFP4:
      d[0] = e8m0_to_f32_half(row[sizeof(BlockMXFP4) * g]);
      break;
    case GGMLType::Q4_K:
    case GGMLType::Q5_K: {  // the same d, dmin and scales at the start of their super-blocks
      const uint8_t* sb = t == GGMLType::Q4_K ? super_of<BlockQ4_K>(row, g) : super_of<BlockQ5_K>(row, g);
      uint8_t sc, mn;
      q4k_scale_min(sb + 4, static_cast<int>(g % 8), &sc, &mn);
      d[0] = f16_to_f32(load_u16(sb)) * static_cast<float>(sc);
      m[0] = f16_to_f32(load_u16(sb + 2)) * static_cast<float>(mn);
      break;
    }
    case GGMLType::Q2_K: {
      const uint8_t* sb = super_of<BlockQ2_K>(row, g);
      const float dd = f16_to_f32(load_u16(sb + 80)), dmin = f16_to_f32(load_u16(sb + 82));
      const int s = 2 * static_cast<int>(g % 8);  // 8n + 2j
      for (int h = 0; h < 2; ++h) {
        d[h] = dd * static_cast<float>(sb[s + h] & 15);
        m[h] = dmin * static_cast<float>(sb[s + h] >> 4);
      }
      return;
    }
    case GGMLType::Q3_K: {
      const uint8_t* sb = super_of<BlockQ3_K>(row, g);
      const float dd = f16_to_f32(load_u16(sb + 108));
      const int s = 2 * static_cast<int>(g % 8);
      for (int h = 0; h < 2; ++h) d[h] = dd * static_cast<float>(q3k_scale(sb + 96, s + h) - 32);
      return;
    }
    case GGMLType::Q6_K: {  // int8 scale of sub-block 2 (g % 8) + h at byte 192 + that (qblocks::BlockQ6_K)
      const uint8_t* sb = super_of<BlockQ6_K>(row, g);
      const float dd = f16_to_f32(load_u16(sb + 208));
      const int s = 2 * static_cast<int>(g % 8);
      for (int h = 0; h < 2; ++h) d[h] = dd * static_cast<float>(static_cast<int8_t>(sb[192 + s + h]));
      return;
    }
    case GGMLType::IQ2_XXS: {
      const uint8_t* sb = super_of<BlockIQ2_XXS>(row, g);
      const uint32_t sg = load_u32(sb + 2 + 8 * (g % 8) + 4);
      d[0] = f16_to_f32(load_u16(sb)) * (0.5f + static_cast<float>(sg >> 28)) * 0.25f;
      break;
    }
    default: {  // IQ4_XS
      const uint8_t* sb = super_of<BlockIQ4_XS>(row, g);
      const int b = static_cast<int>(g % 8);
      const int ls = ((sb[4 + b / 2] >> (4 * (b % 2))) & 15) | ((load_u16(sb + 2) >> (2 * b)) & 3) << 4;
      d[0] = f16_to_f32(load_u16(sb)) * static_cast<float>(ls - 32);
    }
  }
  d[1] = d[0];
  m[1] = m[0];
}

// The signed code of element e (0..31) of group g.
static inline PYV4_HD int group_code(GGMLType t, const uint8_t* row, int64_t g, int e) {
  using namespace qblocks;
  if (const int bytes = grid_iquant_bytes(t)) return iq_group_code(t, row + bytes * (g / 8), static_cast<int>(g % 8), e);
  switch (t) {
    case GGMLType::Q8_0:
      return static_cast<int8_t>(row[sizeof(BlockQ8_0) * g + 2 + e]);
    case GGMLType::Q4_0:
      return static_cast<int>(nibble_lo_hi(row + sizeof(BlockQ4_0) * g + 2, e)) - 8;
    case GGMLType::IQ4_NL:
      return iq4nl_level(nibble_lo_hi(row + sizeof(BlockIQ4_NL) * g + 2, e));
    case GGMLType::MXFP4:
      return e2m1x2(nibble_lo_hi(row + sizeof(BlockMXFP4) * g + 1, e));
    case GGMLType::Q4_K: {  // byte 32 * (j / 2) + e of qs, low nibble for even sub-block j
      const int j = static_cast<int>(g % 8);
      const uint8_t q = super_of<BlockQ4_K>(row, g)[16 + 32 * (j / 2) + e];
      return (j & 1) ? q >> 4 : q & 15;
    }
    case GGMLType::Q5_K: {  // Q4_K's nibble (qs at 48) and bit j of qh[e] (at 16) above it
      const int j = static_cast<int>(g % 8);
      const uint8_t* sb = super_of<BlockQ5_K>(row, g);
      return ((sb[48 + 32 * (j / 2) + e] >> (4 * (j & 1))) & 15) | ((sb[16 + e] >> j) & 1) << 4;
    }
    case GGMLType::Q6_K: {  // elements 128n + 32j + e: ql (at 0) nibble, qh (at 128) 2 bits, - 32
      const uint8_t* sb = super_of<BlockQ6_K>(row, g);
      const int n = static_cast<int>(g % 8) / 4, j = static_cast<int>(g % 4);
      const int lo = (sb[64 * n + 32 * (j % 2) + e] >> (4 * (j / 2))) & 15, hi = (sb[128 + 32 * n + e] >> (2 * j)) & 3;
      return (lo | hi << 4) - 32;
    }
    case GGMLType::Q2_K: {
      const int n = static_cast<int>(g % 8) / 4, j = static_cast<int>(g % 4);
      return (super_of<BlockQ2_K>(row, g)[16 + 32 * n + e] >> (2 * j)) & 3;
    }
    case GGMLType::Q3_K: {
      const uint8_t* sb = super_of<BlockQ3_K>(row, g);
      const int n = static_cast<int>(g % 8) / 4, j = static_cast<int>(g % 4);
      const int low = (sb[32 + 32 * n + e] >> (2 * j)) & 3, high = (sb[e] >> (4 * n + j)) & 1;
      return low + 4 * high - 4;
    }
    case GGMLType::IQ2_XXS: {
      const uint8_t* w = super_of<BlockIQ2_XXS>(row, g) + 2 + 8 * (g % 8);
      const int l = e / 8;  // grid index l covers elements 8l .. 8l + 7
      const int mag = static_cast<int>((iq2xxs_grid(w[l]) >> (8 * (e % 8))) & 255);
      return iq2_negative((load_u32(w + 4) >> (7 * l)) & 127u, e % 8) ? -mag : mag;
    }
    default: {  // IQ4_XS: byte 16b + e % 16 of qs, low nibble for e < 16
      const uint8_t q = super_of<BlockIQ4_XS>(row, g)[8 + 16 * (g % 8) + e % 16];
      return iq4nl_level(e < 16 ? q & 15u : q >> 4);
    }
  }
}

// All 32 codes of group g, packed, with its scales (the GEMV's weight load).
static inline PYV4_HD void load_group(GGMLType t, const uint8_t* row, int64_t g, Group* out) {
  group_scale(t, row, g, out->d, out->m);
  using namespace qblocks;
  // Word-wise: one load per 4 codes (one grid load per 8 for IQ2_XXS) rather
  // than one per code; the GEMV's instruction count is mostly these loads.
  if (const int bytes = grid_iquant_bytes(t)) return iq_group_words(t, row + bytes * (g / 8), static_cast<int>(g % 8), out->w);
  switch (t) {
    case GGMLType::Q8_0: {
      const uint8_t* qs = row + sizeof(BlockQ8_0) * g + 2;
      for (int k = 0; k < 8; ++k) out->w[k] = static_cast<int32_t>(load_u32(qs + 4 * k));
      return;
    }
    case GGMLType::Q4_0:
    case GGMLType::MXFP4: {
      // 16 bytes: elements 0..15 in the low nibbles, 16..31 in the high ones
      const uint8_t* qs = t == GGMLType::Q4_0 ? row + sizeof(BlockQ4_0) * g + 2 : row + sizeof(BlockMXFP4) * g + 1;
      for (int k = 0; k < 8; ++k) {
        const uint32_t nib = nibble_word(qs, k);
        if (t == GGMLType::Q4_0) {  // v - 8: v + 120 stays in its byte, its top bit flipped reads as v - 8
          out->w[k] = static_cast<int32_t>((nib + 0x78787878u) ^ 0x80808080u);
        } else {
          out->w[k] = pack4(e2m1x2(nib & 15), e2m1x2((nib >> 8) & 15), e2m1x2((nib >> 16) & 15), e2m1x2(nib >> 24));
        }
      }
      return;
    }
    case GGMLType::Q4_K: {  // sub-block j: bytes 32 (j / 2) .. + 31 of qs, low nibbles for even j
      const int j = static_cast<int>(g % 8);
      const uint8_t* qs = super_of<BlockQ4_K>(row, g) + 16 + 32 * (j / 2);
      for (int k = 0; k < 8; ++k) out->w[k] = static_cast<int32_t>((load_u32(qs + 4 * k) >> (4 * (j & 1))) & 0x0F0F0F0Fu);
      return;
    }
    case GGMLType::Q5_K: {
      const int j = static_cast<int>(g % 8);
      const uint8_t* sb = super_of<BlockQ5_K>(row, g);
      for (int k = 0; k < 8; ++k) {
        const uint32_t lo = (load_u32(sb + 48 + 32 * (j / 2) + 4 * k) >> (4 * (j & 1))) & 0x0F0F0F0Fu;
        const uint32_t hi = (load_u32(sb + 16 + 4 * k) >> j) & 0x01010101u;
        out->w[k] = static_cast<int32_t>(lo | hi << 4);
      }
      return;
    }
    case GGMLType::Q6_K: {
      const uint8_t* sb = super_of<BlockQ6_K>(row, g);
      const int n = static_cast<int>(g % 8) / 4, j = static_cast<int>(g % 4);
      for (int k = 0; k < 8; ++k) {
        const uint32_t lo = (load_u32(sb + 64 * n + 32 * (j % 2) + 4 * k) >> (4 * (j / 2))) & 0x0F0F0F0Fu;
        const uint32_t hi = (load_u32(sb + 128 + 32 * n + 4 * k) >> (2 * j)) & 0x03030303u;
        // bytes v in 0..63; v + 96 stays in its byte, and its top bit flipped reads as v - 32
        out->w[k] = static_cast<int32_t>(((lo | hi << 4) + 0x60606060u) ^ 0x80808080u);
      }
      return;
    }
    case GGMLType::Q2_K: {
      const int n = static_cast<int>(g % 8) / 4, j = static_cast<int>(g % 4);
      const uint8_t* qs = super_of<BlockQ2_K>(row, g) + 16 + 32 * n;
      for (int k = 0; k < 8; ++k) out->w[k] = static_cast<int32_t>((load_u32(qs + 4 * k) >> (2 * j)) & 0x03030303u);
      return;
    }
    case GGMLType::Q3_K: {
      const uint8_t* sb = super_of<BlockQ3_K>(row, g);
      const int n = static_cast<int>(g % 8) / 4, j = static_cast<int>(g % 4);
      for (int k = 0; k < 8; ++k) {
        const uint32_t low = (load_u32(sb + 32 + 32 * n + 4 * k) >> (2 * j)) & 0x03030303u;
        const uint32_t high = (load_u32(sb + 4 * k) >> (4 * n + j)) & 0x01010101u;
        // bytes v = low + 4 high in 0..7; v + 124 stays in its byte, and its top
        // bit flipped reads as the signed byte v - 4
        out->w[k] = static_cast<int32_t>(((low | high << 2) + 0x7C7C7C7Cu) ^ 0x80808080u);
      }
      return;
    }
    case GGMLType::IQ2_XXS: {
      const uint8_t* w = super_of<BlockIQ2_XXS>(row, g) + 2 + 8 * (g % 8);
      const uint32_t sg = load_u32(w + 4);
      for (int l = 0; l < 4; ++l) {
        const uint64_t mag = iq2xxs_grid(w[l]);
        const uint32_t idx7 = (sg >> (7 * l)) & 127u;
        for (int h = 0; h < 2; ++h) {
          int c[4];
          for (int b = 0; b < 4; ++b) {
            const int v = static_cast<int>((mag >> (8 * (4 * h + b))) & 255u);
            c[b] = iq2_negative(idx7, 4 * h + b) ? -v : v;
          }
          out->w[2 * l + h] = pack4(c[0], c[1], c[2], c[3]);
        }
      }
      return;
    }
    default: {  // IQ4_XS: bytes 16 b .. 16 b + 15 of qs, elements 0..15 in the low nibbles; IQ4_NL: its block's
      const uint8_t* qs = t == GGMLType::IQ4_NL ? row + sizeof(BlockIQ4_NL) * g + 2
                                                : super_of<BlockIQ4_XS>(row, g) + 8 + 16 * (g % 8);
      for (int k = 0; k < 8; ++k) {
        const uint32_t nib = nibble_word(qs, k);
        out->w[k] = pack4(iq4nl_level(nib & 15), iq4nl_level((nib >> 8) & 15), iq4nl_level((nib >> 16) & 15),
                          iq4nl_level(nib >> 24));
      }
    }
  }
}

// Element i of a row of any weight type, decoded to fp32 exactly as
// dequantize_row (csrc/quant/dequant.cpp) does, bit for bit.
static inline PYV4_HD float load_elem(GGMLType t, const uint8_t* row, int64_t i) {
  using namespace qblocks;
  switch (t) {
    case GGMLType::F32:
      return bits_to_f32(load_u32(row + 4 * i));
    case GGMLType::F16:
      return f16_to_f32(load_u16(row + 2 * i));
    case GGMLType::BF16:
      return bf16_to_f32(load_u16(row + 2 * i));
    default: {
      const int64_t g = i / kGroup;
      const int e = static_cast<int>(i % kGroup);
      float d[2], m[2];
      group_scale(t, row, g, d, m);
      const float c = static_cast<float>(group_code(t, row, g, e));
      // d * code where m = 0 (an exact subtraction; IQ2_XXS: db * mag * sign with
      // the sign in the code); Q4_K / Q2_K: d*sc*q - dmin*m, rounded twice
      return mul_sub(d[e / 16], c, m[e / 16]);
    }
  }
}

// Quantizes 32 activations like the CPU's integer kernels (kernels_avx2.cpp
// quantize_act_avx2): dx = max|x| / 127, q = round-half-even(x * 127 / max|x|).
static inline PYV4_HD void quantize_group(const float* x, ActGroup* out) {
  float am = 0.0f;
  for (int i = 0; i < kGroup; ++i) am = fmaxf(am, fabsf(x[i]));
  const float id = am > 0.0f ? 127.0f / am : 0.0f;
  out->qsum[0] = out->qsum[1] = 0;
  for (int k = 0; k < 8; ++k) {
    int q[4];
    for (int b = 0; b < 4; ++b) {
      q[b] = static_cast<int>(rintf(x[4 * k + b] * id));
      out->qsum[k / 4] += q[b];
    }
    out->q[k] = pack4(q[0], q[1], q[2], q[3]);
  }
  out->dx = am / 127.0f;
}

// sum_i value_i * x_i over one group (see the top of this file).
static inline PYV4_HD float group_dot(const Group& w, const ActGroup& a) {
  float s = 0.0f;
  for (int h = 0; h < 2; ++h) {
    int32_t acc = 0;
    for (int k = 4 * h; k < 4 * h + 4; ++k) acc = dot4(w.w[k], a.q[k], acc);
    s += w.d[h] * static_cast<float>(acc) - w.m[h] * static_cast<float>(a.qsum[h]);
  }
  return a.dx * s;
}

// ---- KV records of KVType::FP8 (csrc/kv/qat.h, spec §4.2) ------------------
// The GPU reads the session's rows in the same record layouts; these decode
// one element as RowCodec::decode does, bit for bit.

// A UE8M0 scale: 2^(e - 127) (e = 0: the subnormal 2^-127; 255: inf, as ldexp).
static inline PYV4_HD float ue8m0(uint8_t e) {
  return qblocks::bits_to_f32(e == 0 ? 0x00400000u : static_cast<uint32_t>(e) << 23);
}

// FP8 e4m3fn: subnormals m * 2^-9, 0x7F / 0xFF NaN (the sign kept, as qat.cpp's table).
static inline PYV4_HD float e4m3_value(uint8_t c) {
  const uint32_t E = (c >> 3) & 15u, m = c & 7u;
  float a;
  if ((c & 0x7F) == 0x7F)
    a = qblocks::bits_to_f32(0x7FC00000u);
  else if (E == 0)
    a = static_cast<float>(m) * 0x1p-9f;
  else
    a = qblocks::bits_to_f32((E + 120u) << 23 | m << 20);  // (1 + m/8) * 2^(E-7)
  return (c & 0x80) ? -a : a;
}

// Element i of a main KV record: dims [0, nope) e4m3 with a UE8M0 scale per
// 64 (stored after the rope dims), dims [nope, width) bf16.
static inline PYV4_HD float kv_main_elem(const uint8_t* rec, int64_t width, int64_t nope, int64_t i) {
  if (i >= nope) return qblocks::bf16_to_f32(qblocks::load_u16(rec + nope + 2 * (i - nope)));
  return e4m3_value(rec[i]) * ue8m0(rec[nope + 2 * (width - nope) + i / 64]);
}

// Element i of an FP4 indexer key record: e2m1 nibbles (element 2k low, 2k+1
// high; code 8 is -0 here), then a UE8M0 scale per 32.
static inline PYV4_HD float kv_index_elem(const uint8_t* rec, int64_t width, int64_t i) {
  const unsigned nib = (i & 1) ? rec[i / 2] >> 4 : rec[i / 2] & 15u;
  const float a = static_cast<float>(e2m1x2(nib & 7)) * 0.5f;
  return ((nib & 8) ? -a : a) * ue8m0(rec[width / 2 + i / 32]);
}

}  // namespace cudamath
}  // namespace pyv4
