// The per-token arithmetic of mHC (spec §3.3, §3.8) as functions the CPU
// (csrc/model/mhc.cpp) and the GPU (csrc/cuda/mhc.cu) both run: from a token's
// mixes μ (fn · x̄ · rsqrt(mean(x̄²) + eps)) to its pre / post weights and the
// Sinkhorn-normalised comb matrix. Plain float operations in a fixed order
// (expf is std::exp(float) on the host), so both sides compute the same
// function up to nvcc's contraction of a product and a sum into one fma
// (an ulp per step).
#pragma once

#include <cmath>
#include <cstdint>

#include "quant/blocks.h"  // PYV4_HD

namespace pyv4 {
namespace mhc_math {

// hc_mult: config.cpp rejects any other hyper_connection.count (spec §8.2).
constexpr int64_t kHc = 4;

static inline PYV4_HD float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// Sinkhorn steps on the 4x4 comb matrix: each column (row) divided by its sum + eps.
static inline PYV4_HD void norm_cols(float* C, float eps) {
  for (int64_t j = 0; j < kHc; ++j) {
    float s = 0.0f;
    for (int64_t i = 0; i < kHc; ++i) s += C[i * kHc + j];
    for (int64_t i = 0; i < kHc; ++i) C[i * kHc + j] /= (s + eps);
  }
}
static inline PYV4_HD void norm_rows(float* C, float eps) {
  for (int64_t i = 0; i < kHc; ++i) {
    float s = 0.0f;
    for (int64_t j = 0; j < kHc; ++j) s += C[i * kHc + j];
    for (int64_t j = 0; j < kHc; ++j) C[i * kHc + j] /= (s + eps);
  }
}

// One token's mixing weights from its hc_mix() = (2 + 4) · 4 mixes m:
// pre[4] (+ eps), post[4] (2 · sigmoid) and comb C[4][4] (row-wise softmax +
// eps, then Sinkhorn: columns first, `iters` column passes in all).
static inline PYV4_HD void token_mix(const float* m, const float* scale, const float* base, float eps,
                                     int64_t iters, float* pre, float* post, float* C) {
  const int64_t hc = kHc;
  for (int64_t i = 0; i < hc; ++i) {
    pre[i] = sigmoid(m[i] * scale[0] + base[i]) + eps;
    post[i] = 2.0f * sigmoid(m[hc + i] * scale[1] + base[hc + i]);
  }
  for (int64_t i = 0; i < hc; ++i) {
    float* row = C + i * hc;
    float mx = -INFINITY;
    for (int64_t j = 0; j < hc; ++j) {
      row[j] = m[2 * hc + i * hc + j] * scale[2] + base[2 * hc + i * hc + j];
      mx = mx < row[j] ? row[j] : mx;  // std::max
    }
    float s = 0.0f;
    for (int64_t j = 0; j < hc; ++j) s += (row[j] = expf(row[j] - mx));
    for (int64_t j = 0; j < hc; ++j) row[j] = row[j] / s + eps;
  }
  norm_cols(C, eps);
  for (int64_t it = 1; it < iters; ++it) {
    norm_rows(C, eps);
    norm_cols(C, eps);
  }
}

// The head collapse weights (spec §3.8): pre_i = sigmoid(μ_i · scale + base_i) + eps.
static inline PYV4_HD void head_pre(const float* m, float scale, const float* base, float eps, float* pre) {
  for (int64_t i = 0; i < kHc; ++i) pre[i] = sigmoid(m[i] * scale + base[i]) + eps;
}

}  // namespace mhc_math
}  // namespace pyv4
