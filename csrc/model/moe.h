// Mixture of experts (spec §3.7): hash (tid2eid) or score (sqrtsoftplus + bias)
// routing, renormalised weights × routed scale, clamped SwiGLU on routed and
// shared experts.
#pragma once

#include <cstdint>

#include "common/thread_pool.h"
#include "model/weights.h"

namespace pyv4 {

// Routing of n tokens from their router logits [n, E] (turned into the
// sqrtsoftplus scores in place): per token its K experts sel [n, K] (hash
// layers: tid2eid of the token; else the top-K of score + bias, ties to the
// lower id) and their weights wt [n, K] (scores renormalised × routed scale).
// Also used by the GPU path (csrc/cuda/gpu_engine.cu).
void moe_route(const ModelConfig& c, const LayerWeights& w, float* logits, const int64_t* tokens, int64_t n,
               int64_t* sel, float* wt);

// x: ffn inputs [n, D]; tokens: their ids (for hash routing); out: [n, D].
// Tokens are grouped by expert so each active expert runs one matmul over the
// tokens routed to it; decode therefore reads only the selected experts' rows.
void moe_forward(const ModelConfig& c, const LayerWeights& w, int64_t il, const float* x,
                 const int64_t* tokens, int64_t n, float* out, ThreadPool& pool);

}  // namespace pyv4
