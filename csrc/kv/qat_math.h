// The per-block arithmetic of the KV QAT and of the kv="fp8" records (spec §2,
// §4.2), as functions the CPU codecs (csrc/kv/qat.cpp) and the CUDA encoder
// (csrc/cuda/kv_encode.cu) both run, so a row rounded and encoded on the GPU
// has the CPU's bits. Plain float operations that no compiler may contract
// (no product feeds a sum), libm calls that are exact (frexpf, ldexpf,
// nearbyintf), and clamps written as std::clamp evaluates them.
#pragma once

#include <cmath>
#include <cstdint>

#include "quant/blocks.h"  // PYV4_HD, bits_to_f32 / f32_to_bits

namespace pyv4 {
namespace qat_math {

constexpr float kFp8Max = 448.0f, kFp4Max = 6.0f;
constexpr float kFp8Inv = static_cast<float>(1.0 / 448.0);
constexpr float kFp4Inv = static_cast<float>(1.0 / 6.0);
constexpr float kFp8Floor = 1e-4f;
constexpr float kFp4Floor = 6.0f * 0x1p-126f;

// OFF kernel.py fast_log2_ceil on the fp32 bits of x (x > 0, normal).
static inline PYV4_HD int log2_ceil_bits(float x) {
  const uint32_t b = qblocks::f32_to_bits(x);
  return static_cast<int>((b >> 23) & 0xFF) - 127 + ((b & 0x7FFFFF) != 0 ? 1 : 0);
}

// Power-of-two scale exponent of a block (UE8M0, spec §2): ceil(log2(amax · inv)).
static inline PYV4_HD int block_scale_exp(const float* x, int64_t n, float amax_floor, float inv_max) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float a = fabsf(x[i]);
    amax = amax < a ? a : amax;  // std::max
  }
  amax = amax < amax_floor ? amax_floor : amax;
  return log2_ceil_bits(amax * inv_max);
}

// The per-element functions below are branch-free: their threshold chains
// branched on the data, and the branchy forms took ~17-20 ns an element on
// Zen 4 (the indexer query's FP4 rounding and encoding were ~5 % of a
// prefill's CPU samples; branch-free, 6 ns for fp4, 3 for fp8). The bit forms give the same values as
// the frexpf / nearbyintf forms they replace, NaN included (tests: the QAT
// vectors and the codec round trips).

// Nearest e4m3fn value to a (0 <= a <= 448, or NaN: returned as is), ties to
// even (torch's cast): normal results keep 3 mantissa bits (the fp32 bits
// rounded at bit 20, ties to even; a carry moves into the exponent),
// subnormal ones (a < 2^-6) are multiples of 2^-9 (a * 512 rounded by the
// 2^23 addition, which no contraction can change: a * 512 is exact).
static inline PYV4_HD float round_e4m3_abs(float a) {
  const uint32_t b = qblocks::f32_to_bits(a);
  const float normal = qblocks::bits_to_f32((b + 0x7FFFFu + ((b >> 20) & 1u)) & 0xFFF00000u);
  const float sub = ((a * 512.0f + 8388608.0f) - 8388608.0f) * (1.0f / 512.0f);
  return a < 0x1p-6f ? sub : (a <= 448.0f ? normal : a);
}

// The e4m3fn code of a (already an e4m3 value; NaN: 0x7F).
static inline PYV4_HD uint8_t e4m3_code_abs(float a) {
  const uint32_t b = qblocks::f32_to_bits(a);
  const uint32_t normal = ((((b >> 23) & 0xFFu) - 120u) << 3) | ((b >> 20) & 7u);  // E = e + 7
  const uint32_t sub = static_cast<uint32_t>((a < 0x1p-6f ? a : 0.0f) * 512.0f);  // 0..7
  return static_cast<uint8_t>(a < 0x1p-6f ? sub : (a <= 448.0f ? normal : 0x7Fu));
}

// e2m1 grid {0, .5, 1, 1.5, 2, 3, 4, 6}; ties go to the even code: 7 minus the
// thresholds a stays under (a NaN stays under none: code 7).
static inline PYV4_HD uint8_t e2m1_code_abs(float a) {
  return static_cast<uint8_t>(7 - (a <= 0.25f) - (a < 0.75f) - (a <= 1.25f) - (a < 1.75f) - (a <= 2.5f) -
                              (a < 3.5f) - (a <= 5.0f));
}

// The e2m1 value of a magnitude code 0..7: 2^(c/2 - 1) (1 + (c & 1) / 2) for
// c >= 2, 0 and 0.5 below, built as fp32 bits with masks (a ternary here
// compiled to a branch).
static inline PYV4_HD float e2m1_abs_value(unsigned c) {
  const uint32_t normal = (((c >> 1) + 126u) << 23) | ((c & 1u) << 22);
  const uint32_t is_normal = 0u - static_cast<uint32_t>(c >= 2), is_half = 0u - static_cast<uint32_t>(c == 1);
  return qblocks::bits_to_f32((normal & is_normal) | (0x3F000000u & is_half));
}

static inline PYV4_HD float round_bf16(float v) {
  const uint32_t b = qblocks::f32_to_bits(v);
  if ((b & 0x7F800000) == 0x7F800000) return v;  // inf / nan unchanged
  return qblocks::bits_to_f32((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000u);
}

// Official act_quant on one block of len values (spec §2): a UE8M0 scale from
// the block's amax, each value clamped to ±max and rounded to the format
// (fp8: e4m3, else e2m1).
static inline PYV4_HD void act_quant_block(float* x, int64_t len, bool fp8) {
  const float mx = fp8 ? kFp8Max : kFp4Max;
  const int e = block_scale_exp(x, len, fp8 ? kFp8Floor : kFp4Floor, fp8 ? kFp8Inv : kFp4Inv);
  const float s = ldexpf(1.0f, e);
  for (int64_t i = 0; i < len; ++i) {
    float y = x[i] / s;
    y = y < -mx ? -mx : (mx < y ? mx : y);  // std::clamp
    const float a = fabsf(y);
    x[i] = copysignf(fp8 ? round_e4m3_abs(a) : e2m1_abs_value(e2m1_code_abs(a)), y) * s;
  }
}

// Codes of one already-rounded block: fp8 e4m3 bytes (codes[i]), or e2m1
// nibbles ORed into nibble j0 + i of `codes` (element 2k low, 2k+1 high; the
// bytes must start zeroed). Returns the UE8M0 scale byte. The rounded block's
// own power-of-two scale reproduces it exactly (QAT is idempotent).
static inline PYV4_HD uint8_t encode_block(const float* x, int64_t len, bool fp8, uint8_t* codes, int64_t j0) {
  const int e = block_scale_exp(x, len, fp8 ? kFp8Floor : kFp4Floor, fp8 ? kFp8Inv : kFp4Inv);
  const float s = ldexpf(1.0f, e);
  for (int64_t i = 0; i < len; ++i) {
    const float y = x[i] / s;
    const bool neg = qblocks::f32_to_bits(y) >> 31;  // std::signbit
    if (fp8) {
      codes[i] = static_cast<uint8_t>(e4m3_code_abs(fabsf(y)) | (neg ? 0x80 : 0));
    } else {
      const uint8_t nib = static_cast<uint8_t>(e2m1_code_abs(fabsf(y)) | (neg ? 8 : 0));
      const int64_t j = j0 + i;
      codes[j / 2] |= (j & 1) ? static_cast<uint8_t>(nib << 4) : nib;
    }
  }
  return static_cast<uint8_t>(e + 127);
}

// x ← x · H_n · n^-½ (Sylvester order), n a power of two: in-place butterflies
// (pairs (i, i+h) for h = 1, 2, 4, …) then one multiply by n^-½ in fp32.
static inline PYV4_HD void hadamard_inplace(float* x, int64_t n) {
  for (int64_t h = 1; h < n; h *= 2) {
    for (int64_t i = 0; i < n; i += 2 * h) {
      for (int64_t j = i; j < i + h; ++j) {
        const float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
    }
  }
  const float scale = static_cast<float>(1.0 / sqrt(static_cast<double>(n)));
  for (int64_t i = 0; i < n; ++i) x[i] *= scale;
}

}  // namespace qat_math
}  // namespace pyv4
