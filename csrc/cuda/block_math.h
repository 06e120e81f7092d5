// Block decode and index math of the CUDA kernels, as __host__ __device__
// functions: the kernels (csrc/cuda/*.cu, nvcc) and the host-side checks
// (csrc/python/bind_cuda.cpp, the C++ compiler, tested on any CPU by
// tests/test_cuda_host.py) run this same code. Block layouts are the file's
// (csrc/quant/blocks.h, spec §10); the GPU reads weights in GGML rows.
//
// Weights are read in groups of 32 elements: one Q8_0 / Q4_0 / MXFP4 block,
// or one sub-block of a Q4_K super-block. A group is 32 signed int8 codes with
// value_i = d * code_i - m, so with activations quantized per group of 32 like
// the CPU's integer kernels (x_i ~= dx * q_i, csrc/quant/kernels.h)
//     sum_i value_i x_i = dx * (d * sum_i code_i q_i - m * sum_i q_i)
// and the integer sum is four dp4a on packed words.
#pragma once

#include <cmath>
#include <cstdint>

#include "quant/blocks.h"
#include "quant/ggml_types.h"

namespace pyv4 {
namespace cudamath {

constexpr int kGroup = 32;

// One group of weights: codes packed 4 per word in element order (byte k of
// word j is element 4j + k), value_i = d * code_i - m.
struct Group {
  int32_t w[8];
  float d, m;
};

// A group of quantized activations: x_i ~= dx * q_i, qsum = sum_i q_i.
struct ActGroup {
  int32_t q[8];
  float dx;
  int32_t qsum;
};

// Twice the E2M1 value of a 4-bit code (csrc/quant/blocks.h kMxfp4x2, whose
// table device code cannot index): magnitudes 0,1,2,3 then 4,6,8,12.
static inline PYV4_HD int e2m1x2(unsigned code) {
  const int mag = code & 7;
  const int v = mag < 4 ? mag : (2 + (mag & 1)) << ((mag >> 1) - 1);
  return (code & 8) ? -v : v;
}

static inline PYV4_HD uint32_t load_u32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
         static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
}

static inline PYV4_HD int32_t pack4(int a, int b, int c, int d) {
  return static_cast<int32_t>((static_cast<uint32_t>(a) & 255u) | (static_cast<uint32_t>(b) & 255u) << 8 |
                              (static_cast<uint32_t>(c) & 255u) << 16 |
                              (static_cast<uint32_t>(d) & 255u) << 24);
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
  return t == GGMLType::Q8_0 || t == GGMLType::Q4_0 || t == GGMLType::MXFP4 || t == GGMLType::Q4_K;
}

// The code of element e (0..31) of 4-bit group bytes qs: low nibbles hold
// elements 0..15, high nibbles 16..31 (Q4_0, MXFP4).
static inline PYV4_HD unsigned nibble_lo_hi(const uint8_t* qs, int e) {
  return e < 16 ? qs[e] & 15u : qs[e - 16] >> 4;
}

// Q4_K: where group g (sub-block j = g % 8 of super-block g / 8) keeps its
// codes: byte 32 * (j / 2) + l of the super-block's qs, low nibble for even j.
static inline PYV4_HD const uint8_t* q4k_super(const uint8_t* row, int64_t g) {
  return row + static_cast<int64_t>(sizeof(qblocks::BlockQ4_K)) * (g / 8);
}

// d and m of a group (value = d * code - m); codes as described in load_group.
static inline PYV4_HD void group_scale(GGMLType t, const uint8_t* row, int64_t g, float* d, float* m) {
  using namespace qblocks;
  *m = 0.0f;
  switch (t) {
    case GGMLType::Q8_0:
      *d = f16_to_f32(load_u16(row + sizeof(BlockQ8_0) * g));
      return;
    case GGMLType::Q4_0:
      *d = f16_to_f32(load_u16(row + sizeof(BlockQ4_0) * g));
      return;
    case GGMLType::MXFP4:
      *d = e8m0_to_f32_half(row[sizeof(BlockMXFP4) * g]);
      return;
    default: {  // Q4_K
      const uint8_t* sb = q4k_super(row, g);
      uint8_t sc, mn;
      q4k_scale_min(sb + 4, static_cast<int>(g % 8), &sc, &mn);
      *d = f16_to_f32(load_u16(sb)) * static_cast<float>(sc);
      *m = f16_to_f32(load_u16(sb + 2)) * static_cast<float>(mn);
    }
  }
}

// The signed code of element e (0..31) of group g.
static inline PYV4_HD int group_code(GGMLType t, const uint8_t* row, int64_t g, int e) {
  using namespace qblocks;
  switch (t) {
    case GGMLType::Q8_0:
      return static_cast<int8_t>(row[sizeof(BlockQ8_0) * g + 2 + e]);
    case GGMLType::Q4_0:
      return static_cast<int>(nibble_lo_hi(row + sizeof(BlockQ4_0) * g + 2, e)) - 8;
    case GGMLType::MXFP4:
      return e2m1x2(nibble_lo_hi(row + sizeof(BlockMXFP4) * g + 1, e));
    default: {  // Q4_K
      const int j = static_cast<int>(g % 8);
      const uint8_t q = q4k_super(row, g)[16 + 32 * (j / 2) + e];
      return (j & 1) ? q >> 4 : q & 15;
    }
  }
}

// All 32 codes of group g, packed, with its scale (the GEMV's weight load).
static inline PYV4_HD void load_group(GGMLType t, const uint8_t* row, int64_t g, Group* out) {
  group_scale(t, row, g, &out->d, &out->m);
  if (t == GGMLType::Q8_0) {
    const uint8_t* qs = row + sizeof(qblocks::BlockQ8_0) * g + 2;
    for (int k = 0; k < 8; ++k) out->w[k] = static_cast<int32_t>(load_u32(qs + 4 * k));
    return;
  }
  for (int k = 0; k < 8; ++k)
    out->w[k] = pack4(group_code(t, row, g, 4 * k), group_code(t, row, g, 4 * k + 1),
                      group_code(t, row, g, 4 * k + 2), group_code(t, row, g, 4 * k + 3));
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
      float d, m;
      group_scale(t, row, g, &d, &m);
      const float c = static_cast<float>(group_code(t, row, g, static_cast<int>(i % kGroup)));
      // Q4_0 / MXFP4 / Q8_0: d * code (m = 0, exact subtraction); Q4_K: d*sc*q - dmin*m
      return mul_sub(d, c, m);
    }
  }
}

// Quantizes 32 activations like the CPU's integer kernels (kernels_avx2.cpp
// quantize_act_avx2): dx = max|x| / 127, q = round-half-even(x * 127 / max|x|).
static inline PYV4_HD void quantize_group(const float* x, ActGroup* out) {
  float am = 0.0f;
  for (int i = 0; i < kGroup; ++i) am = fmaxf(am, fabsf(x[i]));
  const float id = am > 0.0f ? 127.0f / am : 0.0f;
  int32_t sum = 0;
  for (int k = 0; k < 8; ++k) {
    int q[4];
    for (int b = 0; b < 4; ++b) {
      q[b] = static_cast<int>(rintf(x[4 * k + b] * id));
      sum += q[b];
    }
    out->q[k] = pack4(q[0], q[1], q[2], q[3]);
  }
  out->dx = am / 127.0f;
  out->qsum = sum;
}

// sum_i value_i * x_i over one group (see the top of this file).
static inline PYV4_HD float group_dot(const Group& w, const int32_t* q, float dx, int32_t qsum) {
  int32_t acc = 0;
  for (int k = 0; k < 8; ++k) acc = dot4(w.w[k], q[k], acc);
  return dx * (w.d * static_cast<float>(acc) - w.m * static_cast<float>(qsum));
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
