// The weight-matrix ops the forward pass calls. One entry point per op; the
// kernel for a weight type and ISA is chosen inside (csrc/quant/*).
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/thread_pool.h"
#include "quant/cpu_features.h"  // set_isa / set_compute_mode (PYV4_ISA, PYV4_COMPUTE)
#include "quant/ggml_types.h"

namespace pyv4 {

// A weight matrix in torch layout [rows = out, cols = in], each row stored as
// `cols` elements of `type` (row_stride bytes apart): a view into the mapped
// file in GGML block layout, or (split) into the loader's copy in the split
// layout of quant/split_layout.h.
struct WeightMatrix {
  GGMLType type = GGMLType::F32;
  int64_t rows = 0, cols = 0;
  const uint8_t* data = nullptr;
  size_t row_stride = 0;
  bool split = false;

  const uint8_t* row(int64_t r) const { return data + static_cast<size_t>(r) * row_stride; }
  // Rows [r0, r0 + n). MoE: a 3-D expert tensor (torch [E, out, in], GGUF
  // ffn_*_exps) is E consecutive blocks of `out` rows, so expert e is
  // row_slice(e * out, out); matmul / matmul_serial on it cost the same as on a
  // standalone [out, in] matrix (1 token: one row stream; >= 4 tokens: tiled GEMM).
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
// Rows of W are split across the pool's threads (contiguous ranges).
//
// Which kernel runs (quant/cpu_features.h): compute_mode() == Reference, or ISA
// scalar: the scalar oracle (dequantize_row + sequential fp32 dot). Fast mode on
// AVX2 / AVX-512: F32/F16/BF16 use an fp32 FMA dot (no activation quantization,
// ~1e-7 relative); Q8_0/Q4_0/Q4_K/MXFP4 and Q2_K/Q3_K/IQ2_XXS (quant/kernels.h)
// quantize X per token in blocks of 32
// to int8 (scale max|x|/127, round to nearest) and use integer dots, so each
// output moves by at most sum_i |w_i| * max|x|_block(i) / 254 (plus fp32
// rounding). No heap allocation per call after the first (thread_local scratch).
void matmul(const WeightMatrix& W, const float* X, int64_t ldx, int64_t n_tokens, float* Y,
            int64_t ldy, ThreadPool& pool);

// The token count from which matmul runs W's type through a lane GEMM (AVX-512,
// or AVX2 for Q8_0 and the low-bit types) under the active ISA and compute mode
// (fewer: the type's GEMV or row tiles; quant/matmul.cpp own_gemv_avx512); 0
// where it never does. Tests find the edges of the kernel paths by it.
int64_t lane_gemm_min_tokens(GGMLType t);

// One product of a matmul_many batch: Y = X · Wᵀ over n_tokens rows of X.
struct MatmulTask {
  const WeightMatrix* W;
  const float* X;
  int64_t ldx;
  int64_t n_tokens;
  float* Y;
  int64_t ldy;
};

// Several independent products in one parallel region, each with the result
// matmul gives. A decode step issues many small GEMVs (a routed MoE layer: 6
// experts x gate/up/down + the shared expert); one region per matrix pays a
// fork/join and a cold prefetcher ramp each time. Here all their weight rows
// form one range, weighted by token count, that the threads split into
// contiguous stretches; tasks reading the same X with the same weight type
// and width share one activation quantization.
void matmul_many(const MatmulTask* tasks, int64_t n_tasks, ThreadPool& pool);

// Sees every product of matmul / matmul_many before it runs, on the calling
// thread (matmul_serial's, which run inside parallel regions, through
// observe_matmul by their caller): the
// importance-matrix collection (model/imatrix.h). At most one; none by default.
class MatmulObserver {
 public:
  virtual ~MatmulObserver() = default;
  virtual void observe(const WeightMatrix& W, const float* X, int64_t ldx, int64_t n_tokens) = 0;
};
void set_matmul_observer(MatmulObserver* observer);  // nullptr: none
// Reports to the observer (if any) a product that runs as matmul_serial pieces
// inside a parallel region, once for the whole matrix, from the calling thread.
void observe_matmul(const WeightMatrix& W, const float* X, int64_t ldx, int64_t n_tokens);

// Same on the calling thread only (for callers that already run inside a
// parallel region, e.g. one routed expert per thread).
void matmul_serial(const WeightMatrix& W, const float* X, int64_t ldx, int64_t n_tokens, float* Y,
                   int64_t ldy);

}  // namespace pyv4
