// Manifold-constrained hyper-connections (mHC, spec §3.3) and the final
// hc_head collapse (spec §3.8). The residual of every token is hc_mult = 4
// streams of width D, stored stream-major: X[t] = [X_0 | X_1 | X_2 | X_3].
#pragma once

#include <cstdint>
#include <vector>

#include "common/thread_pool.h"
#include "model/config.h"
#include "model/weights.h"

namespace pyv4 {

// Mixing weights of one mHC site for n tokens.
struct HyperMix {
  std::vector<float> post;  // [n, hc]
  std::vector<float> comb;  // [n, hc, hc], Sinkhorn-normalised
};

// hc_pre: computes pre/post/comb for each token of X [n, hc*D] and writes the
// collapsed block input y [n, D] = Σ_i pre_i X_i. The mix matmul is split by
// fn rows and the rest by tokens over the pool; no result depends on the
// thread count or on which tokens share the call.
void hc_pre(const ModelConfig& c, const HyperConnWeights& w, const float* X, int64_t n, float* y,
            HyperMix& mix, ThreadPool& pool);

// hc_post: X'_j = post_j · f + Σ_i comb_ij · X_i (sum over the FIRST index), in place on X.
void hc_post(const ModelConfig& c, const HyperMix& mix, const float* f, float* X, int64_t n,
             ThreadPool& pool);

// Final head collapse: y [n, D] = Σ_i (sigmoid(μ_i·scale + base_i) + eps) X_i.
void hc_head(const ModelConfig& c, const ModelWeights& w, const float* X, int64_t n, float* y,
             ThreadPool& pool);

}  // namespace pyv4
