// The compressor's block pooling on the GPU (contract in cuda/model_ops.h):
// one thread per channel runs the CPU's own per-channel code
// (model/compressor_math.h); the block's norm, RoPE and KV rounding are the
// existing ops (cuda::rms_norm, cuda::rope, cuda::kv_encode_fp8).
#include <cuda_runtime.h>

#include "cuda/model_ops.h"
#include "cuda/runtime.h"
#include "model/compressor_math.h"

namespace pyv4 {
namespace cuda {

namespace {

__global__ void pool_kernel(const float* kv, const float* gate, int64_t tail_start, int64_t pw, int64_t b,
                            int64_t m, int64_t width, bool overlap, float* row) {
  const int64_t ch = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (ch >= width) return;
  row[ch] = compressor_math::pool_channel(kv, gate, tail_start, pw, b, m, width, overlap, ch);
}

}  // namespace

void compressor_pool(const float* kv, const float* gate, int64_t tail_start, int64_t pw, int64_t b, int64_t ratio,
                     int64_t width, bool overlap, float* row) {
  if (width <= 0) return;
  const int threads = 128;
  pool_kernel<<<static_cast<unsigned>((width + threads - 1) / threads), threads>>>(kv, gate, tail_start, pw, b,
                                                                                   ratio, width, overlap, row);
  PYV4_CUDA_LAUNCHED(pool_kernel);
}

}  // namespace cuda
}  // namespace pyv4
