// RMSNorm, RoPE (spec §2) and the clamped SwiGLU (spec §3.7) on the GPU (contracts in cuda/ops.h).
// Products and sums the CPU rounds separately are written with __f*_rn so
// that nvcc does not contract them into fma and the results stay within an
// ulp or two of the CPU's.
#include "cuda/ops.h"

#include <cuda_runtime.h>

#include "cuda/reduce.cuh"
#include "cuda/runtime.h"

namespace pyv4 {
namespace cuda {

namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

__global__ void rms_norm_kernel(const float* X, const float* w, float* Y, int64_t dim, float eps) {
  __shared__ double scratch[32];
  const float* x = X + blockIdx.x * dim;
  float* y = Y + blockIdx.x * dim;
  double ss = 0.0;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss += static_cast<double>(x[i]) * x[i];
  ss = block_reduce(ss, SumOp{}, scratch);
  const float r = 1.0f / sqrtf(static_cast<float>(ss / dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x)
    y[i] = w ? __fmul_rn(w[i], __fmul_rn(x[i], r)) : __fmul_rn(x[i], r);
}

__global__ void rope_kernel(float* V, int64_t n, int64_t width, const int64_t* pos, const float* inv_freq,
                            int64_t half, bool inverse) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= n * half) return;
  const int64_t t = e / half, k = e % half;
  float* r = V + t * width + width - 2 * half;
  const float ang = __fmul_rn(static_cast<float>(pos[t]), inv_freq[k]);
  const float c = cosf(ang), s = inverse ? -sinf(ang) : sinf(ang);
  const float a = r[2 * k], b = r[2 * k + 1];
  r[2 * k] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
  r[2 * k + 1] = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
}

__global__ void swiglu_kernel(const float* g, const float* u, float* h, int64_t n, float limit) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float gi = g[i], ui = u[i];
  if (limit > 0.0f) {
    gi = fminf(gi, limit);
    ui = fminf(fmaxf(ui, -limit), limit);
  }
  h[i] = __fmul_rn(gi / (1.0f + expf(-gi)), ui);
}

}  // namespace

void rms_norm(const float* X, const float* w, float* Y, int64_t n, int64_t dim, float eps) {
  if (n <= 0) return;
  rms_norm_kernel<<<static_cast<unsigned>(n), kThreads>>>(X, w, Y, dim, eps);
  PYV4_CUDA_LAUNCHED(rms_norm_kernel);
}

void rope(float* V, int64_t n, int64_t width, const int64_t* pos, const float* inv_freq, int64_t half,
          bool inverse) {
  if (n <= 0 || half <= 0) return;
  rope_kernel<<<blocks_for(n * half), kThreads>>>(V, n, width, pos, inv_freq, half, inverse);
  PYV4_CUDA_LAUNCHED(rope_kernel);
}

void swiglu(const float* g, const float* u, float* h, int64_t n, float limit) {
  if (n <= 0) return;
  swiglu_kernel<<<blocks_for(n), kThreads>>>(g, u, h, n, limit);
  PYV4_CUDA_LAUNCHED(swiglu_kernel);
}

}  // namespace cuda
}  // namespace pyv4
