// Lightning-indexer scores on the GPU from the FP4 key records of kv="fp8"
// (spec §3.6, §4.2; the CPU reference is index_scores_ref in
// csrc/kv/kv_kernels.cpp on the decoded keys): one warp per key, each lane
// decoding dim/32 of the key's elements once and reusing them for every head.
// The selection of the best keys is topk.cu.
// The sums are fp32 in a warp's order (fused multiply-adds, a butterfly),
// not the CPU's: scores agree to rounding, so two keys whose scores tie to
// rounding may be picked differently than on the CPU. The model tests
// compare logits within a tolerance and top-1 agreement, which allows that.
#include <cuda_runtime.h>

#include "common/error.h"
#include "cuda/block_math.h"
#include "cuda/ops.h"
#include "cuda/runtime.h"

namespace pyv4 {
namespace cuda {

namespace {

constexpr int kWarps = 8;
constexpr int kMaxPerLane = 16;  // dim <= 512

__global__ void index_scores_kernel(const float* q, const float* w, int64_t nih, int64_t dim,
                                    const uint8_t* keys, size_t stride, int64_t n, float* out) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= n) return;
  const uint8_t* rec = keys + r * stride;
  const int per_lane = static_cast<int>(dim / 32);
  float k[kMaxPerLane];
#pragma unroll
  for (int e = 0; e < kMaxPerLane; ++e)
    if (e < per_lane) k[e] = cudamath::kv_index_elem(rec, dim, lane + 32 * e);
  float score = 0.0f;
  for (int64_t h = 0; h < nih; ++h) {
    const float* qh = q + h * dim;
    float s = 0.0f;
#pragma unroll
    for (int e = 0; e < kMaxPerLane; ++e)
      if (e < per_lane) s = fmaf(qh[lane + 32 * e], k[e], s);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    score = fmaf(fmaxf(s, 0.0f), w[h], score);
  }
  if (lane == 0) out[r] = score;
}

}  // namespace

void index_scores_fp4(const float* q, const float* w, int64_t nih, int64_t dim, const uint8_t* keys,
                      size_t stride, int64_t n, float* out) {
  // a lane holds dim / 32 of the key's elements in registers
  if (dim % 32 != 0 || dim > 32 * kMaxPerLane)
    throw InputError("GPU indexer: index_head_dim " + std::to_string(dim) + " is not a multiple of 32 up to " +
                     std::to_string(32 * kMaxPerLane));
  if (n <= 0) return;
  index_scores_kernel<<<static_cast<unsigned>((n + kWarps - 1) / kWarps), 32 * kWarps>>>(q, w, nih, dim, keys,
                                                                                         stride, n, out);
  PYV4_CUDA_LAUNCHED(index_scores_kernel);
}

}  // namespace cuda
}  // namespace pyv4
