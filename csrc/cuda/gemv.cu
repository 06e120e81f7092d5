// GEMV of the decode step (spec §10 block layouts, matmul.h for the contract):
// one warp per weight row, its lanes over the row's groups of 32, every token
// (<= kGemvMaxTokens) of the call against each group while it is in registers.
#include <cuda_runtime.h>

#include <type_traits>

#include "cuda/launch.h"
#include "cuda/runtime.h"

namespace pyv4 {
namespace cuda {

using cudamath::ActGroup;
using cudamath::Group;

namespace {

constexpr int kWarpsPerBlock = 8;

__global__ void quantize_act_kernel(const float* X, int64_t ldx, int64_t n_tokens, int64_t groups,
                                    ActGroup* act) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n_tokens * groups) return;
  const int64_t t = i / groups, g = i % groups;
  cudamath::quantize_group(X + t * ldx + g * cudamath::kGroup, &act[i]);
}

__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <GGMLType T>
__global__ void gemv_int_kernel(const uint8_t* W, int64_t rows, int64_t groups, size_t stride,
                                const ActGroup* act, int n_tokens, float* Y, int64_t ldy) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;  // whole warps leave together: r is uniform in a warp
  const uint8_t* row = W + r * stride;
  float acc[kGemvMaxTokens] = {};
  for (int64_t g = lane; g < groups; g += 32) {
    Group w;
    cudamath::load_group(T, row, g, &w);
#pragma unroll
    for (int t = 0; t < kGemvMaxTokens; ++t) {
      if (t < n_tokens) {
        const ActGroup& a = act[t * groups + g];
        acc[t] += cudamath::group_dot(w, a);
      }
    }
  }
#pragma unroll
  for (int t = 0; t < kGemvMaxTokens; ++t) {
    if (t < n_tokens) {
      const float s = warp_sum(acc[t]);
      if (lane == 0) Y[t * ldy + r] = s;
    }
  }
}

template <GGMLType T>
__global__ void gemv_float_kernel(const uint8_t* W, int64_t rows, int64_t cols, size_t stride,
                                  const float* X, int64_t ldx, int n_tokens, float* Y, int64_t ldy) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const uint8_t* row = W + r * stride;
  float acc[kGemvMaxTokens] = {};
  for (int64_t i = lane; i < cols; i += 32) {  // consecutive lanes read consecutive elements
    const float w = cudamath::load_elem(T, row, i);
#pragma unroll
    for (int t = 0; t < kGemvMaxTokens; ++t)
      if (t < n_tokens) acc[t] = fmaf(w, X[t * ldx + i], acc[t]);
  }
#pragma unroll
  for (int t = 0; t < kGemvMaxTokens; ++t) {
    if (t < n_tokens) {
      const float s = warp_sum(acc[t]);
      if (lane == 0) Y[t * ldy + r] = s;
    }
  }
}

unsigned row_blocks(int64_t rows) {
  return static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

}  // namespace

void launch_quantize_act(const float* X, int64_t ldx, int64_t n_tokens, int64_t cols, ActGroup* act) {
  const int64_t n = n_tokens * (cols / cudamath::kGroup);
  if (n == 0) return;
  quantize_act_kernel<<<static_cast<unsigned>((n + 255) / 256), 256>>>(X, ldx, n_tokens,
                                                                      cols / cudamath::kGroup, act);
  PYV4_CUDA_LAUNCHED(quantize_act_kernel);
}

void launch_gemv_int(const DeviceMatrix& W, const ActGroup* act, int64_t n_tokens, float* Y,
                     int64_t ldy) {
  with_type(W.type, [&](auto type) {
    constexpr GGMLType T = decltype(type)::value;
    if constexpr (cudamath::is_group_type(T)) {
      gemv_int_kernel<T><<<row_blocks(W.rows), 32 * kWarpsPerBlock>>>(
          W.data, W.rows, W.cols / cudamath::kGroup, W.row_stride, act, static_cast<int>(n_tokens), Y,
          ldy);
      PYV4_CUDA_LAUNCHED(gemv_int_kernel);
    }
  });
}

void launch_gemv_float(const DeviceMatrix& W, const float* X, int64_t ldx, int64_t n_tokens, float* Y,
                       int64_t ldy) {
  with_type(W.type, [&](auto type) {
    constexpr GGMLType T = decltype(type)::value;
    if constexpr (!cudamath::is_group_type(T)) {
      gemv_float_kernel<T><<<row_blocks(W.rows), 32 * kWarpsPerBlock>>>(
          W.data, W.rows, W.cols, W.row_stride, X, ldx, static_cast<int>(n_tokens), Y, ldy);
      PYV4_CUDA_LAUNCHED(gemv_float_kernel);
    }
  });
}

}  // namespace cuda
}  // namespace pyv4
