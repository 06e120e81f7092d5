// Mixture of experts (spec §3.7): hash (tid2eid) or score (sqrtsoftplus + bias)
// routing, renormalised weights × routed scale, clamped SwiGLU on routed and
// shared experts.
#pragma once

#include <cstdint>

#include "common/thread_pool.h"
#include "model/weights.h"

namespace pyv4 {

// x: ffn inputs [n, D]; tokens: their ids (for hash routing); out: [n, D].
// Tokens are grouped by expert so each active expert runs one matmul over the
// tokens routed to it; decode therefore reads only the selected experts' rows.
void moe_forward(const ModelConfig& c, const LayerWeights& w, int64_t il, const float* x,
                 const int64_t* tokens, int64_t n, float* out, ThreadPool& pool);

}  // namespace pyv4
