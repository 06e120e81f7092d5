// mHC on the GPU (contracts in cuda/model_ops.h): the mixes by cuda::matmul
// and a per-token inverse RMS, the per-token weights by the CPU's own code
// (model/mhc_math.h, one thread per token: a 4x4 Sinkhorn is a few hundred
// flops), and the collapse / post updates elementwise. The collapse and post
// sums are written with __f*_rn in the CPU's order, so nvcc does not contract
// them into fma.
#include <cuda_runtime.h>

#include <string>

#include "common/error.h"
#include "cuda/model_ops.h"
#include "cuda/reduce.cuh"
#include "cuda/runtime.h"
#include "model/mhc_math.h"

namespace pyv4 {
namespace cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kHc = mhc_math::kHc;

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// mu[t][0..M) *= 1 / sqrt(mean(X[t]²) + eps), the sum of squares in double
// (the CPU's sum_squares; only the order of its partial sums differs).
__global__ void scale_by_inv_rms_kernel(const float* X, int64_t W, float eps, float* mu, int64_t M) {
  __shared__ double scratch[32];
  const float* x = X + blockIdx.x * W;
  double ss = 0.0;
  for (int64_t i = threadIdx.x; i < W; i += blockDim.x) ss += static_cast<double>(x[i]) * x[i];
  ss = block_reduce(ss, SumOp{}, scratch);
  const float r = 1.0f / sqrtf(static_cast<float>(ss / W) + eps);
  for (int64_t m = threadIdx.x; m < M; m += blockDim.x) mu[blockIdx.x * M + m] = __fmul_rn(mu[blockIdx.x * M + m], r);
}

__global__ void token_mix_kernel(const float* mu, int64_t M, const float* scale, const float* base, float eps,
                                 int64_t iters, int64_t n, float* pre, float* post, float* comb) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n) return;
  mhc_math::token_mix(mu + t * M, scale, base, eps, iters, pre + t * kHc, post + t * kHc, comb + t * kHc * kHc);
}

__global__ void head_pre_kernel(const float* mu, float scale, const float* base, float eps, int64_t n, float* pre) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n) return;
  mhc_math::head_pre(mu + t * kHc, scale, base, eps, pre + t * kHc);
}

// y[t][d] = Σ_i pre[t][i] · X[t][i][d], i in order from 0 (collapse in mhc.cpp).
__global__ void collapse_kernel(const float* X, int64_t n, int64_t D, const float* pre, float* y) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= n * D) return;
  const int64_t t = e / D, d = e % D;
  const float* x = X + t * kHc * D + d;
  float s = 0.0f;
  for (int64_t i = 0; i < kHc; ++i) s = __fadd_rn(s, __fmul_rn(pre[t * kHc + i], x[i * D]));
  y[e] = s;
}

// X'[t][j][d] = post_j f[t][d] + Σ_i comb_ij X[t][i][d] (post_step in mhc.cpp).
__global__ void post_kernel(const float* post, const float* comb, const float* f, float* X, int64_t n, int64_t D) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= n * D) return;
  const int64_t t = e / D, d = e % D;
  float* x = X + t * kHc * D + d;
  const float* C = comb + t * kHc * kHc;
  float in[kHc];
  for (int64_t i = 0; i < kHc; ++i) in[i] = x[i * D];
  for (int64_t j = 0; j < kHc; ++j) {
    float out = __fmul_rn(post[t * kHc + j], f[e]);
    for (int64_t i = 0; i < kHc; ++i) out = __fadd_rn(out, __fmul_rn(C[i * kHc + j], in[i]));
    x[j * D] = out;
  }
}

// mu [n, fn.rows] = the mixes of X (mixes in mhc.cpp).
void mixes(const DeviceMatrix& fn, const float* X, int64_t n, int64_t D, float rms_eps, float* mu,
           MatmulScratch& scratch) {
  const int64_t W = kHc * D;
  matmul(fn, X, W, n, mu, fn.rows, scratch);
  scale_by_inv_rms_kernel<<<static_cast<unsigned>(n), kThreads>>>(X, W, rms_eps, mu, fn.rows);
  PYV4_CUDA_LAUNCHED(scale_by_inv_rms_kernel);
}

void collapse(const float* X, int64_t n, int64_t D, const float* pre, float* y) {
  collapse_kernel<<<blocks_for(n * D), kThreads>>>(X, n, D, pre, y);
  PYV4_CUDA_LAUNCHED(collapse_kernel);
}

void check_fn(const DeviceMatrix& fn, int64_t rows, int64_t D, const char* what) {
  if (fn.rows != rows || fn.cols != kHc * D)
    throw InputError(std::string(what) + ": fn must be [" + std::to_string(rows) + ", " + std::to_string(kHc * D) +
                    "], got [" + std::to_string(fn.rows) + ", " + std::to_string(fn.cols) + "]");
}

}  // namespace

void hc_pre(const DeviceMatrix& fn, const float* base, const float* scale, const float* X, int64_t n, int64_t D,
            int64_t iters, float hc_eps, float rms_eps, float* y, float* post, float* comb, float* mu, float* pre,
            MatmulScratch& scratch) {
  const int64_t M = (2 + kHc) * kHc;
  check_fn(fn, M, D, "cuda hc_pre");
  if (n <= 0) return;
  mixes(fn, X, n, D, rms_eps, mu, scratch);
  token_mix_kernel<<<blocks_for(n), kThreads>>>(mu, M, scale, base, hc_eps, iters, n, pre, post, comb);
  PYV4_CUDA_LAUNCHED(token_mix_kernel);
  collapse(X, n, D, pre, y);
}

void hc_post(const float* post, const float* comb, const float* f, float* X, int64_t n, int64_t D) {
  if (n <= 0) return;
  post_kernel<<<blocks_for(n * D), kThreads>>>(post, comb, f, X, n, D);
  PYV4_CUDA_LAUNCHED(post_kernel);
}

void hc_head(const DeviceMatrix& fn, const float* base, float scale, const float* X, int64_t n, int64_t D,
             float hc_eps, float rms_eps, float* y, float* mu, float* pre, MatmulScratch& scratch) {
  check_fn(fn, kHc, D, "cuda hc_head");
  if (n <= 0) return;
  mixes(fn, X, n, D, rms_eps, mu, scratch);
  head_pre_kernel<<<blocks_for(n), kThreads>>>(mu, scale, base, hc_eps, n, pre);
  PYV4_CUDA_LAUNCHED(head_pre_kernel);
  collapse(X, n, D, pre, y);
}

}  // namespace cuda
}  // namespace pyv4
