// Block-wide reductions of the CUDA ops (blockDim.x a multiple of 32, <= 1024).
#pragma once

#include <cuda_runtime.h>

namespace pyv4 {
namespace cuda {

struct SumOp {
  template <class T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct MaxOp {
  template <class T>
  __device__ T operator()(T a, T b) const { return a > b ? a : b; }
};

// The reduction of v over the block, returned to every thread. Uses (and
// ends with a barrier on) 32 elements of shared scratch.
template <class T, class Op>
__device__ T block_reduce(T v, Op op, T* scratch) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = scratch[0];
  for (int w = 1; w < warps; ++w) v = op(v, scratch[w]);
  __syncthreads();  // the scratch may be reused at once
  return v;
}

}  // namespace cuda
}  // namespace pyv4
