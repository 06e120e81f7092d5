// GEMM of prefill for the float weight types (F32 / F16 / BF16; the integer
// types run on int8 tensor cores, gemm_int8.cu): each block computes a 64-row
// x 64-token tile of Y, stepping through the columns 32 at a time; the weight
// tile is decoded to fp32 into shared memory with the exact element decode of
// cuda/block_math.h (= dequantize_row), the activations are used as they are,
// and each thread keeps 4 x 4 fp32 accumulators. No tensor cores: an fp32 dot.
#include <cuda_runtime.h>

#include <algorithm>

#include "cuda/launch.h"
#include "cuda/runtime.h"

namespace pyv4 {
namespace cuda {

namespace {

constexpr int kTileRows = 64, kTileTokens = 64, kTileK = 32, kThreads = 256;

template <GGMLType T>
__global__ void gemm_kernel(const uint8_t* W, int64_t rows, int64_t cols, size_t stride, const float* X,
                            int64_t ldx, int64_t n_tokens, float* Y, int64_t ldy) {
  // +1: a thread's column walk through a tile row does not hit one bank.
  __shared__ float ws[kTileRows][kTileK + 1];
  __shared__ float xs[kTileTokens][kTileK + 1];
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  const int64_t t0 = static_cast<int64_t>(blockIdx.y) * kTileTokens;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < cols; k0 += kTileK) {
    for (int e = tid; e < kTileRows * kTileK; e += kThreads) {
      const int i = e / kTileK, k = e % kTileK;
      const int64_t r = r0 + i, c = k0 + k;
      ws[i][k] = (r < rows && c < cols) ? cudamath::load_elem(T, W + r * stride, c) : 0.0f;
      const int64_t t = t0 + i;
      xs[i][k] = (t < n_tokens && c < cols) ? X[t * ldx + c] : 0.0f;
    }
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < kTileK; ++k) {
      float w[4], x[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) w[i] = ws[ty + 16 * i][k];
#pragma unroll
      for (int j = 0; j < 4; ++j) x[j] = xs[tx + 16 * j][k];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(w[i], x[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t r = r0 + ty + 16 * i, t = t0 + tx + 16 * j;
      if (r < rows && t < n_tokens) Y[t * ldy + r] = acc[i][j];
    }
}

template <GGMLType T>
__global__ void dequantize_kernel(const uint8_t* W, int64_t rows, int64_t cols, size_t stride, float* Y) {
  const int64_t n = rows * cols;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = e / cols, c = e % cols;
    Y[e] = cudamath::load_elem(T, W + r * stride, c);
  }
}

}  // namespace

void launch_gemm(const DeviceMatrix& W, const float* X, int64_t ldx, int64_t n_tokens, float* Y,
                 int64_t ldy) {
  const dim3 grid(static_cast<unsigned>((W.rows + kTileRows - 1) / kTileRows),
                  static_cast<unsigned>((n_tokens + kTileTokens - 1) / kTileTokens));
  with_type(W.type, [&](auto type) {
    constexpr GGMLType T = decltype(type)::value;
    if constexpr (!cudamath::is_group_type(T)) {
      gemm_kernel<T><<<grid, kThreads>>>(W.data, W.rows, W.cols, W.row_stride, X, ldx, n_tokens, Y, ldy);
      PYV4_CUDA_LAUNCHED(gemm_kernel);
    }
  });
}

void launch_dequantize(const DeviceMatrix& W, float* Y) {
  const int64_t n = W.rows * W.cols;
  if (n == 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 65536));
  with_type(W.type, [&](auto type) {
    dequantize_kernel<decltype(type)::value><<<blocks, 256>>>(W.data, W.rows, W.cols, W.row_stride, Y);
    PYV4_CUDA_LAUNCHED(dequantize_kernel);
  });
}

}  // namespace cuda
}  // namespace pyv4
