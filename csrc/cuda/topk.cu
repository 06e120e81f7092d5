// The indexer's top-k on the GPU (spec §3.6; the CPU reference is select_topk,
// csrc/model/attention.h): per row of scores the k best under a strict total
// order (higher score first, ties to the lower index), returned in row order.
// One block per row: a radix select over the 32-bit order keys of the scores
// finds the k-th best key (4 passes of 8 bits, a 256-bin histogram each), then
// one pass keeps, in row order, every key above it and the first ties.
// Scores must not be NaN (the indexer's are sums of ReLUs).
#include <cuda_runtime.h>

#include "cuda/ops.h"
#include "cuda/runtime.h"

namespace pyv4 {
namespace cuda {

namespace {

constexpr int kThreads = 1024;

// Larger score <=> larger key; -0 and +0 compare equal, as on the CPU.
__device__ inline uint32_t order_key(float s) {
  const uint32_t b = __float_as_uint(s == 0.0f ? 0.0f : s);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Exclusive prefix count of f over the block in thread order, and the block's
// total (*total, valid after the call). Uses 32 ints of shared scratch.
__device__ int block_scan(bool f, int* scratch, int* total) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const unsigned votes = __ballot_sync(0xffffffffu, f);
  if (lane == 0) scratch[warp] = __popc(votes);
  __syncthreads();
  int before = __popc(votes & ((1u << lane) - 1u)), all = 0;
  for (int w = 0; w < warps; ++w) {
    if (w < warp) before += scratch[w];
    all += scratch[w];
  }
  __syncthreads();  // the scratch may be reused at once
  *total = all;
  return before;
}

__global__ void topk_kernel(const float* scores, int64_t n, int64_t k, int64_t* out) {
  __shared__ unsigned hist[256];
  __shared__ uint32_t s_prefix;
  __shared__ int64_t s_left;
  __shared__ int scratch[32];
  const float* s = scores + blockIdx.x * n;
  int64_t* o = out + blockIdx.x * k;
  uint32_t prefix = 0, mask = 0;
  int64_t left = k;  // how many of the keys matching prefix are still to take
  if (k < n) {
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
      __syncthreads();
      for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const uint32_t u = order_key(s[i]);
        if ((u & mask) == prefix) atomicAdd(&hist[(u >> shift) & 255u], 1u);
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        int64_t above = 0;
        for (int b = 255; b >= 0; --b) {
          if (above + hist[b] >= left) {
            s_prefix = prefix | static_cast<uint32_t>(b) << shift;
            s_left = left - above;
            break;
          }
          above += hist[b];
        }
      }
      __syncthreads();
      prefix = s_prefix;
      left = s_left;
      mask |= 255u << shift;
    }
  } else {
    prefix = 0;  // every key is >= 0: all n are taken (left = k >= n ties never run out)
  }
  // prefix is now the k-th best key: take every key above it and, of the keys
  // equal to it, the first `left` in row order.
  int64_t base = 0, ties = 0;
  for (int64_t c0 = 0; c0 < n; c0 += blockDim.x) {
    const int64_t i = c0 + threadIdx.x;
    const uint32_t u = i < n ? order_key(s[i]) : 0u;
    const bool in = i < n;
    int n_ties, n_take;
    const int tie_rank = block_scan(in && u == prefix, scratch, &n_ties);
    const bool take = in && (u > prefix || (u == prefix && ties + tie_rank < left));
    const int pos = block_scan(take, scratch, &n_take);
    if (take) o[base + pos] = i;
    base += n_take;
    ties += n_ties;
  }
}

}  // namespace

void topk(const float* scores, int64_t m, int64_t n, int64_t k, int64_t* out) {
  k = k < n ? k : n;
  if (m <= 0 || k <= 0) return;
  topk_kernel<<<static_cast<unsigned>(m), kThreads>>>(scores, n, k, out);
  PYV4_CUDA_LAUNCHED(topk_kernel);
}

}  // namespace cuda
}  // namespace pyv4
