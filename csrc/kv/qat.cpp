#include "kv/qat.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/error.h"
#include "quant/blocks.h"

namespace pyv4 {

const char* kv_type_name(KVType t) {
  switch (t) {
    case KVType::F32: return "f32";
    case KVType::BF16: return "bf16";
    case KVType::FP8: return "fp8";
  }
  return "?";
}

KVType parse_kv_type(const std::string& s) {
  if (s == "f32") return KVType::F32;
  if (s == "bf16") return KVType::BF16;
  if (s == "fp8") return KVType::FP8;
  throw InputError("kv must be \"fp8\", \"bf16\" or \"f32\", not \"" + s + "\"");
}

namespace {

using qblocks::bf16_to_f32;
using qblocks::bits_to_f32;
using qblocks::f32_to_bits;

// OFF kernel.py fast_log2_ceil on the fp32 bits of x (x > 0, normal).
int log2_ceil_bits(float x) {
  const uint32_t b = f32_to_bits(x);
  return static_cast<int>((b >> 23) & 0xFF) - 127 + ((b & 0x7FFFFF) != 0 ? 1 : 0);
}

// Power-of-two scale exponent of a block (UE8M0, spec §2): ceil(log2(amax · inv)).
int block_scale_exp(const float* x, int64_t n, float amax_floor, float inv_max) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  amax = std::max(amax, amax_floor);
  return log2_ceil_bits(amax * inv_max);
}

// Nearest e4m3fn value to a (0 <= a <= 448), ties to even (torch's cast).
float round_e4m3_abs(float a) {
  if (a < 0x1p-6f) return std::nearbyint(a * 512.0f) / 512.0f;  // subnormals: step 2^-9
  int e;
  std::frexp(a, &e);  // a = f · 2^e, f in [0.5, 1): 3 mantissa bits → step 2^(e-4)
  const float ulp = std::ldexp(1.0f, e - 4);
  return std::nearbyint(a / ulp) * ulp;
}

uint8_t e4m3_code_abs(float a) {  // a already an e4m3 value
  if (a == 0.0f) return 0;
  if (a < 0x1p-6f) return static_cast<uint8_t>(a * 512.0f);
  int e;
  const float f = std::frexp(a, &e);
  const int E = e - 1 + 7;
  const int mant = static_cast<int>((f * 2.0f - 1.0f) * 8.0f);
  return static_cast<uint8_t>((E << 3) | mant);
}

// e2m1 grid {0, .5, 1, 1.5, 2, 3, 4, 6}; ties go to the even code.
uint8_t e2m1_code_abs(float a) {
  if (a <= 0.25f) return 0;
  if (a < 0.75f) return 1;
  if (a <= 1.25f) return 2;
  if (a < 1.75f) return 3;
  if (a <= 2.5f) return 4;
  if (a < 3.5f) return 5;
  if (a <= 5.0f) return 6;
  return 7;
}

const float kE2M1[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};

struct Fp8Table {
  float v[256];
  Fp8Table() {
    for (int c = 0; c < 256; ++c) {
      const int E = (c >> 3) & 0xF, m = c & 7;
      float a = E == 0 ? m * 0x1p-9f : std::ldexp(1.0f + m / 8.0f, E - 7);
      if ((c & 0x7F) == 0x7F) a = NAN;
      v[c] = (c & 0x80) ? -a : a;
    }
  }
};
const Fp8Table kFp8;

constexpr float kFp8Max = 448.0f, kFp4Max = 6.0f;
const float kFp8Inv = static_cast<float>(1.0 / 448.0);
const float kFp4Inv = static_cast<float>(1.0 / 6.0);
const float kFp8Floor = 1e-4f;
const float kFp4Floor = 6.0f * 0x1p-126f;

}  // namespace

float fp8_e4m3_value(uint8_t code) { return kFp8.v[code]; }
float fp4_e2m1_value(uint8_t nib) { return (nib & 8) ? -kE2M1[nib & 7] : kE2M1[nib & 7]; }

float round_bf16(float v) {
  const uint32_t b = f32_to_bits(v);
  if ((b & 0x7F800000) == 0x7F800000) return v;  // inf / nan unchanged
  return bits_to_f32((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000u);
}
uint16_t to_bf16_bits(float v) { return static_cast<uint16_t>(f32_to_bits(v) >> 16); }

namespace {

// Official act_quant: per block a UE8M0 scale from the block's amax, then each
// value clamped to ±max and rounded to the format by round_abs.
template <class RoundAbs>
void act_quant(float* x, int64_t n, int64_t block, float floor, float inv, float max, RoundAbs round_abs) {
  for (int64_t i0 = 0; i0 < n; i0 += block) {
    const int64_t len = std::min(block, n - i0);
    const int e = block_scale_exp(x + i0, len, floor, inv);
    const float s = std::ldexp(1.0f, e);
    for (int64_t i = i0; i < i0 + len; ++i) {
      const float y = std::clamp(x[i] / s, -max, max);
      x[i] = std::copysign(round_abs(std::fabs(y)), y) * s;
    }
  }
}

}  // namespace

void act_quant_fp8(float* x, int64_t n, int64_t block) {
  act_quant(x, n, block, kFp8Floor, kFp8Inv, kFp8Max, round_e4m3_abs);
}

void act_quant_fp4(float* x, int64_t n, int64_t block) {
  act_quant(x, n, block, kFp4Floor, kFp4Inv, kFp4Max, [](float a) { return kE2M1[e2m1_code_abs(a)]; });
}

void hadamard(float* x, int64_t n) {
  for (int64_t h = 1; h < n; h *= 2) {
    for (int64_t i = 0; i < n; i += 2 * h) {
      for (int64_t j = i; j < i + h; ++j) {
        const float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
    }
  }
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(n)));
  for (int64_t i = 0; i < n; ++i) x[i] *= scale;
}

void round_index_query(KVType t, float* q, int64_t width) {
  if (t != KVType::FP8) return;
  hadamard(q, width);
  act_quant_fp4(q, width, 32);
}

// ---- codecs ----------------------------------------------------------------

RowCodec RowCodec::make(KVType t, Kind k, int64_t width, int64_t rope_dim) {
  RowCodec c;
  c.type = t;
  c.kind = k;
  c.width = width;
  c.nope = k == Kind::Main ? width - rope_dim : 0;
  switch (t) {
    case KVType::F32: c.bytes = static_cast<size_t>(width) * 4; break;
    case KVType::BF16: c.bytes = static_cast<size_t>(width) * 2; break;
    case KVType::FP8:
      if (k == Kind::Main) {
        // 448 B e4m3 + 128 B bf16 rope + 7 UE8M0 scales + 1 pad = 584 B for V4 (spec §4.2)
        const size_t raw = c.nope + (width - c.nope) * 2 + (c.nope + 63) / 64;
        c.bytes = (raw + 7) / 8 * 8;
      } else {
        if (width % 32 != 0 || (width & (width - 1)) != 0) {
          throw FormatError("kv=\"fp8\" needs index_head_dim to be a power of two and a multiple of 32");
        }
        c.bytes = static_cast<size_t>(width / 2 + width / 32);  // 68 B for 128 dims (spec §4.2)
        c.bytes = (c.bytes + 3) / 4 * 4;
      }
      break;
  }
  return c;
}

void RowCodec::round(float* row) const {
  switch (type) {
    case KVType::F32: return;
    case KVType::BF16:
      for (int64_t i = 0; i < width; ++i) row[i] = round_bf16(row[i]);
      return;
    case KVType::FP8:
      if (kind == Kind::Main) {
        act_quant_fp8(row, nope, 64);  // spec §3.4 step 3 / §3.5 post-processing
        for (int64_t i = nope; i < width; ++i) row[i] = round_bf16(row[i]);  // rope dims stay BF16
      } else {
        hadamard(row, width);  // spec §3.6: Hadamard(128) then FP4 QAT (block 32)
        act_quant_fp4(row, width, 32);
      }
      return;
  }
}

void RowCodec::encode(const float* row, uint8_t* dst) const {
  std::memset(dst, 0, bytes);
  switch (type) {
    case KVType::F32: std::memcpy(dst, row, width * 4); return;
    case KVType::BF16:
      for (int64_t i = 0; i < width; ++i) {
        const uint16_t b = to_bf16_bits(row[i]);
        std::memcpy(dst + 2 * i, &b, 2);
      }
      return;
    case KVType::FP8:
      if (kind == Kind::Main) {
        // The rounded row's own power-of-two scale reproduces it exactly: QAT is
        // idempotent (re-quantizing a QAT output gives the same or half the scale,
        // and both represent every value of the block).
        uint8_t* scales = dst + nope + (width - nope) * 2;
        for (int64_t i0 = 0, blk = 0; i0 < nope; i0 += 64, ++blk) {
          const int64_t len = std::min<int64_t>(64, nope - i0);
          const int e = block_scale_exp(row + i0, len, kFp8Floor, kFp8Inv);
          scales[blk] = static_cast<uint8_t>(e + 127);
          const float s = std::ldexp(1.0f, e);
          for (int64_t i = i0; i < i0 + len; ++i) {
            const float y = row[i] / s;
            dst[i] = e4m3_code_abs(std::fabs(y)) | (std::signbit(y) ? 0x80 : 0);
          }
        }
        for (int64_t i = nope; i < width; ++i) {
          const uint16_t b = to_bf16_bits(row[i]);
          std::memcpy(dst + nope + 2 * (i - nope), &b, 2);
        }
      } else {
        uint8_t* scales = dst + width / 2;
        for (int64_t blk = 0; blk < width / 32; ++blk) {
          const float* x = row + blk * 32;
          const int e = block_scale_exp(x, 32, kFp4Floor, kFp4Inv);
          scales[blk] = static_cast<uint8_t>(e + 127);
          const float s = std::ldexp(1.0f, e);
          for (int64_t i = 0; i < 32; ++i) {
            const float y = x[i] / s;
            const uint8_t nib = e2m1_code_abs(std::fabs(y)) | (std::signbit(y) ? 8 : 0);
            const int64_t j = blk * 32 + i;  // element 2k in the low nibble, 2k+1 in the high
            dst[j / 2] |= (j & 1) ? static_cast<uint8_t>(nib << 4) : nib;
          }
        }
      }
      return;
  }
}

void decode_fp4_row(const uint8_t* src, int64_t width, float* row) {
  const uint8_t* scales = src + width / 2;
  for (int64_t blk = 0; blk < width / 32; ++blk) {
    const float s = std::ldexp(1.0f, static_cast<int>(scales[blk]) - 127);
    for (int64_t i = blk * 32; i < blk * 32 + 32; ++i) {
      const uint8_t b = src[i / 2];
      row[i] = fp4_e2m1_value((i & 1) ? (b >> 4) : (b & 15)) * s;
    }
  }
}

void RowCodec::decode(const uint8_t* src, float* row) const {
  switch (type) {
    case KVType::F32: std::memcpy(row, src, width * 4); return;
    case KVType::BF16:
      for (int64_t i = 0; i < width; ++i) {
        uint16_t b;
        std::memcpy(&b, src + 2 * i, 2);
        row[i] = bf16_to_f32(b);
      }
      return;
    case KVType::FP8:
      if (kind == Kind::Main) {
        const uint8_t* scales = src + nope + (width - nope) * 2;
        for (int64_t i0 = 0; i0 < nope; i0 += 64) {
          const float s = std::ldexp(1.0f, static_cast<int>(scales[i0 / 64]) - 127);
          const int64_t i1 = std::min<int64_t>(nope, i0 + 64);
          for (int64_t i = i0; i < i1; ++i) row[i] = kFp8.v[src[i]] * s;
        }
        for (int64_t i = nope; i < width; ++i) {
          uint16_t b;
          std::memcpy(&b, src + nope + 2 * (i - nope), 2);
          row[i] = bf16_to_f32(b);
        }
      } else {
        decode_fp4_row(src, width, row);
      }
      return;
  }
}

}  // namespace pyv4
