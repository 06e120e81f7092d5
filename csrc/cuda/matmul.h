// Weight products on the GPU: Y = X · Wᵀ for a weight in GGML rows in device
// memory (the same bytes as the file). Plain C++ interface (csrc/cuda/matmul.cu).
//
// Decode (few tokens): a GEMV that streams each row once for all tokens
// (gemv.cu). Integer weight types (Q8_0, Q4_0, IQ4_NL, Q4_K, Q5_K, Q6_K, MXFP4, the
// low-bit expert types Q2_K, Q3_K, IQ2_XXS, IQ4_XS of issue #16 and the other i-quants) work on the
// activations quantized per group of 32 to int8 exactly as the CPU's fast
// path does (csrc/quant/kernels.h) with dp4a dots (cuda/block_math.h); F32 /
// F16 / BF16 are an fp32 dot. Prefill: for the integer types a GEMM on int8
// tensor cores with the same quantized activations and integer dots
// (gemm_int8.cu), so GEMV and GEMM differ only in the order of fp32 sums; for
// the float types a tiled fp32 GEMM (gemm.cu) that decodes weight tiles into
// shared memory, whose error is that of an fp32 dot.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda/buffer.h"
#include "quant/matmul.h"

namespace pyv4 {
namespace cuda {

// Weights are a WeightMatrix (csrc/quant/matmul.h) whose data points to device
// memory, in GGML rows (split == false; the split layout is the CPU's).
using DeviceMatrix = WeightMatrix;

enum class MatmulKernel { Auto, Gemv, Gemm };

// Above this many tokens Auto picks the GEMM: the GEMV keeps one accumulator
// per token in registers and re-reads each weight group for every 8 tokens.
constexpr int64_t kGemvMaxTokens = 8;

// Whether matmul multiplies weights of type t: every weight type the CPU runs (F32, F16,
// BF16, Q8_0, Q4_0, IQ4_NL, Q4_K, Q5_K, Q6_K, MXFP4, the low-bit types of issue #16 and
// the i-quants of community files); uploading another type throws (gpu_weights.cu).
bool multiplies(GGMLType t);

// Device scratch of the quantized activations, grown as needed and kept.
struct MatmulScratch {
  DeviceBuffer act;
};

// Y[t * ldy + r] = sum_c W[r, c] * X[t * ldx + c]; X, Y in device memory.
// Asynchronous on the default stream; throws InputError for a type the GPU
// does not multiply and CudaError for a CUDA error.
void matmul(const DeviceMatrix& W, const float* X, int64_t ldx, int64_t n_tokens, float* Y,
            int64_t ldy, MatmulScratch& scratch, MatmulKernel kernel = MatmulKernel::Auto);

// Device scratch of moe_matmul: the gathered inputs and outputs, and matmul's.
struct MoeScratch {
  DeviceBuffer x, y;
  // The pairs' gather / scatter indices, sent through a pinned area: a call
  // queues its work and returns without waiting for the device.
  DeviceBuffer idx;
  Staging idx_up;
  MatmulScratch matmul;
};

// Routed experts grouped by expert (csrc/cuda/moe.cu): W stacks n_expert
// matrices of W.rows / n_expert rows (GGUF ffn_*_exps); pair p multiplies
// token tokens[p] of X [n_tokens, W.cols] by expert experts[p] into row p of
// Y [n_pairs, W.rows / n_expert]. tokens / experts are host arrays (the
// routing is known on the host); X, Y device memory. Asynchronous, on the
// default stream, like the other ops.
void moe_matmul(const DeviceMatrix& W, int64_t n_expert, const float* X, int64_t n_tokens, const int32_t* tokens,
                const int32_t* experts, int64_t n_pairs, float* Y, MoeScratch& scratch);

// Every row of W decoded to fp32 (Y is [rows, cols]), the kernels' element decode.
void dequantize(const DeviceMatrix& W, float* Y);

}  // namespace cuda
}  // namespace pyv4
