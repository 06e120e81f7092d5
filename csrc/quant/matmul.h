// The weight-matrix ops the forward pass calls. One entry point per op; the
// kernel for a weight type and ISA is chosen inside (csrc/quant/*).
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/thread_pool.h"
#include "quant/ggml_types.h"

namespace pyv4 {

// A weight matrix in torch layout [rows = out, cols = in], each row stored as
// `cols` elements of `type` (row_stride bytes apart). Views into the mmapped file.
struct WeightMatrix {
  GGMLType type = GGMLType::F32;
  int64_t rows = 0, cols = 0;
  const uint8_t* data = nullptr;
  size_t row_stride = 0;

  const uint8_t* row(int64_t r) const { return data + static_cast<size_t>(r) * row_stride; }
  WeightMatrix row_slice(int64_t r0, int64_t n) const {
    WeightMatrix w = *this;
    w.rows = n;
    w.data = row(r0);
    return w;
  }
};

// Plain scalar decode of n elements (n a multiple of the block size) to fp32.
// This is the reference every fast kernel is tested against.
void dequantize_row(GGMLType type, const void* src, float* dst, int64_t n);

// Y[t, r] = sum_c W[r, c] * X[t, c] for t < n_tokens, r < W.rows.
// X is [n_tokens, W.cols] with row stride ldx floats; Y has row stride ldy floats.
// Rows of W are split across the pool's threads.
void matmul(const WeightMatrix& W, const float* X, int64_t ldx, int64_t n_tokens, float* Y,
            int64_t ldy, ThreadPool& pool);

// Same on the calling thread only (for callers that already run inside a
// parallel region, e.g. one routed expert per thread).
void matmul_serial(const WeightMatrix& W, const float* X, int64_t ldx, int64_t n_tokens, float* Y,
                   int64_t ldy);

}  // namespace pyv4
