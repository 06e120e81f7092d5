// Reference matmul: decode each weight row to fp32 once, then dot it with every
// token. Exact fp32 math, used for the float weight types and as the oracle for
// the fast kernels.
#include "quant/matmul.h"

#include <cstring>
#include <vector>

#include "common/error.h"

namespace pyv4 {

static inline float f16_to_f32(uint16_t h) {
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
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

static inline float bf16_to_f32(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

void dequantize_row(GGMLType type, const void* src, float* dst, int64_t n) {
  switch (type) {
    case GGMLType::F32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case GGMLType::F16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
    case GGMLType::BF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    default:
      throw FormatError(std::string("dequantize_row: weight type ") + type_name(type) +
                        " is not supported yet");
  }
}

static inline float dot(const float* a, const float* b, int64_t n) {
  float s = 0.0f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

static void matmul_rows(const WeightMatrix& W, const float* X, int64_t ldx, int64_t n_tokens,
                        float* Y, int64_t ldy, int64_t r0, int64_t r1) {
  thread_local std::vector<float> row;
  if (static_cast<int64_t>(row.size()) < W.cols) row.resize(W.cols);
  for (int64_t r = r0; r < r1; ++r) {
    const float* w;
    if (W.type == GGMLType::F32) {
      w = reinterpret_cast<const float*>(W.row(r));
    } else {
      dequantize_row(W.type, W.row(r), row.data(), W.cols);
      w = row.data();
    }
    for (int64_t t = 0; t < n_tokens; ++t) Y[t * ldy + r] = dot(w, X + t * ldx, W.cols);
  }
}

void matmul_serial(const WeightMatrix& W, const float* X, int64_t ldx, int64_t n_tokens, float* Y,
                   int64_t ldy) {
  matmul_rows(W, X, ldx, n_tokens, Y, ldy, 0, W.rows);
}

void matmul(const WeightMatrix& W, const float* X, int64_t ldx, int64_t n_tokens, float* Y,
            int64_t ldy, ThreadPool& pool) {
  pool.parallel_for(W.rows, 8, [&](int64_t r0, int64_t r1, int) {
    matmul_rows(W, X, ldx, n_tokens, Y, ldy, r0, r1);
  });
}

}  // namespace pyv4
