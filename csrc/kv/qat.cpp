#include "kv/qat.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/error.h"
#include "kv/kv_kernels.h"
#include "kv/qat_math.h"
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
using qblocks::f32_to_bits;

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

}  // namespace

float fp8_e4m3_value(uint8_t code) { return kFp8.v[code]; }
float fp4_e2m1_value(uint8_t nib) {
  const float a = qat_math::e2m1_abs_value(nib & 7);
  return (nib & 8) ? -a : a;
}

float round_bf16(float v) { return qat_math::round_bf16(v); }
uint16_t to_bf16_bits(float v) { return static_cast<uint16_t>(f32_to_bits(v) >> 16); }

// Blocks of `block` values along x; a trailing partial block is its own block.
void act_quant_fp8(float* x, int64_t n, int64_t block) {
  for (int64_t i0 = 0; i0 < n; i0 += block) qat_math::act_quant_block(x + i0, std::min(block, n - i0), true);
}

void act_quant_fp4(float* x, int64_t n, int64_t block) {
  for (int64_t i0 = 0; i0 < n; i0 += block) qat_math::act_quant_block(x + i0, std::min(block, n - i0), false);
}

void hadamard(float* x, int64_t n) { qat_math::hadamard_inplace(x, n); }

void encode_fp4_row(const float* row, int64_t width, uint8_t* dst, size_t bytes) {
  std::memset(dst, 0, bytes);
  uint8_t* scales = dst + width / 2;
  for (int64_t blk = 0; blk < width / 32; ++blk)
    scales[blk] = qat_math::encode_block(row + 32 * blk, 32, false, dst, 32 * blk);
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
        // spec §3.6: Hadamard(128) then FP4 QAT (block 32); the same bits in every table
        kv_kernels().index_round_fp4(row, width, nullptr, 0);
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
        for (int64_t i0 = 0; i0 < nope; i0 += 64)
          scales[i0 / 64] = qat_math::encode_block(row + i0, std::min<int64_t>(64, nope - i0), true, dst + i0, 0);
        for (int64_t i = nope; i < width; ++i) {
          const uint16_t b = to_bf16_bits(row[i]);
          std::memcpy(dst + nope + 2 * (i - nope), &b, 2);
        }
      } else {
        encode_fp4_row(row, width, dst, bytes);
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

void decode_fp8_main_row(const uint8_t* src, int64_t nope, int64_t width, float* row) {
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
        kv_kernels().decode_fp8_main(src, nope, width, row);  // the same bits in every table
      } else {
        decode_fp4_row(src, width, row);
      }
      return;
  }
}

}  // namespace pyv4
