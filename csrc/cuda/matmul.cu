// Dispatch of the weight products on the GPU (contract in cuda/matmul.h).
#include "cuda/matmul.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "common/error.h"
#include "cuda/launch.h"
#include "cuda/runtime.h"

namespace pyv4 {
namespace cuda {

namespace {

void check_matrix(const DeviceMatrix& W) {
  if (W.split) throw InputError("cuda matmul: the GPU reads GGML rows, not the split layout");
  if (!multiplies(W.type)) throw InputError(std::string("cuda matmul: ") + type_name(W.type) + " is not a weight type");
  if (cudamath::is_group_type(W.type) && W.cols % traits(W.type).block_size != 0)
    throw InputError(std::string("cuda matmul: ") + type_name(W.type) + " with " + std::to_string(W.cols) +
                     " columns (not whole blocks)");
}

}  // namespace

bool multiplies(GGMLType t) {
  return t == GGMLType::F32 || t == GGMLType::F16 || t == GGMLType::BF16 || cudamath::is_group_type(t);
}

void matmul(const DeviceMatrix& W, const float* X, int64_t ldx, int64_t n_tokens, float* Y, int64_t ldy,
            MatmulScratch& scratch, MatmulKernel kernel) {
  check_matrix(W);
  if (W.rows <= 0 || n_tokens <= 0) return;
  if (kernel == MatmulKernel::Auto)
    kernel = n_tokens <= kGemvMaxTokens ? MatmulKernel::Gemv : MatmulKernel::Gemm;
  const bool quantized = cudamath::is_group_type(W.type);
  if (kernel == MatmulKernel::Gemm && !quantized) {
    launch_gemm(W, X, ldx, n_tokens, Y, ldy);
    return;
  }
  cudamath::ActGroup* act = nullptr;
  if (quantized) {
    scratch.act.reserve(sizeof(cudamath::ActGroup) * static_cast<size_t>(n_tokens * (W.cols / 32)));
    act = scratch.act.as<cudamath::ActGroup>();
    launch_quantize_act(X, ldx, n_tokens, W.cols, act);
    if (kernel == MatmulKernel::Gemm) {
      launch_gemm_int8(W, act, n_tokens, Y, ldy);
      return;
    }
  }
  // The GEMV holds kGemvMaxTokens accumulators: more tokens go 8 at a time.
  for (int64_t t = 0; t < n_tokens; t += kGemvMaxTokens) {
    const int64_t n = std::min(kGemvMaxTokens, n_tokens - t);
    if (quantized)
      launch_gemv_int(W, act + t * (W.cols / 32), n, Y + t * ldy, ldy);
    else
      launch_gemv_float(W, X + t * ldx, ldx, n, Y + t * ldy, ldy);
  }
}

void dequantize(const DeviceMatrix& W, float* Y) {
  check_matrix(W);
  launch_dequantize(W, Y);
}

}  // namespace cuda
}  // namespace pyv4
