// mHC (spec §3.3, §3.8) and the compressor's pooling (spec §3.5, §3.6) on the
// GPU (csrc/cuda/mhc.cu, compressor.cu), each mirroring the CPU function named
// below through the shared per-token / per-channel math (model/mhc_math.h,
// model/compressor_math.h). Plain C++ interface; pointers are device
// pointers; asynchronous on the default stream; CUDA errors throw CudaError.
#pragma once

#include <cstdint>

#include "cuda/matmul.h"

namespace pyv4 {
namespace cuda {

// hc_pre (model/mhc.h) of n tokens X [n, 4·D]: mixes μ = (fn · x̄) ·
// rsqrt(mean(x̄²) + rms_eps) (fn [24, 4·D]: cuda::matmul, an fp32 dot for
// float types), per token the pre / post / comb weights (comb Sinkhorn-
// normalised, `iters` column passes), and y [n, D] = Σ_i pre_i X_i.
// base [24], scale [3]: device copies of the site's vectors. post [n, 4] and
// comb [n, 16] feed hc_post; mu [n, 24] and pre [n, 4] are scratch.
void hc_pre(const DeviceMatrix& fn, const float* base, const float* scale, const float* X, int64_t n, int64_t D,
            int64_t iters, float hc_eps, float rms_eps, float* y, float* post, float* comb, float* mu, float* pre,
            MatmulScratch& scratch);

// hc_post (model/mhc.h), in place on X [n, 4·D]: X'_j = post_j · f + Σ_i comb_ij · X_i.
void hc_post(const float* post, const float* comb, const float* f, float* X, int64_t n, int64_t D);

// hc_head (model/mhc.h): y [n, D] = Σ_i (sigmoid(μ_i · scale + base_i) + eps) X_i,
// fn [4, 4·D], base [4]; scale is the host value of the one-element scale.
// mu [n, 4] and pre [n, 4] are scratch.
void hc_head(const DeviceMatrix& fn, const float* base, float scale, const float* X, int64_t n, int64_t D,
             float hc_eps, float rms_eps, float* y, float* mu, float* pre, MatmulScratch& scratch);

// The pooling of the compressor's block b (emit_block in model/compressor.cpp,
// before its norm / RoPE / rounding): row[ch] for ch < width from the raw
// projections kv / gate [.., pw] of the tokens at positions tail_start, ...
// (they must cover the block's slots: compressor_math::pool_channel).
void compressor_pool(const float* kv, const float* gate, int64_t tail_start, int64_t pw, int64_t b, int64_t ratio,
                     int64_t width, bool overlap, float* row);

}  // namespace cuda
}  // namespace pyv4
