// One attention block (spec §3.4): Q/KV projections, the layer's compressors
// and Lightning indexer, a softmax with sink over window ∪ visible compressed
// rows, inverse RoPE, and the grouped low-rank output projection.
#pragma once

#include <cstdint>

#include "common/thread_pool.h"
#include "kv/kv_state.h"
#include "model/ops.h"
#include "model/weights.h"

namespace pyv4 {

// x: attention inputs [n, D] of the tokens at positions [pos0, pos0 + n);
// out: [n, D]. Reads and updates the layer's state in kv, and records the rows
// it touched in kv.layer(il).touch.
void attention_forward(const ModelConfig& c, const LayerWeights& w, int64_t il,
                       const RopeTable& rope, const float* x, int64_t n, int64_t pos0,
                       KVState& kv, float* out, ThreadPool& pool);

// Indexer selection for one query (spec §3.6): the top-k of the visible blocks
// [0, n_visible) by score, ties to the lower block index; k = min(topk, n_visible).
void select_topk(const float* scores, int64_t n_visible, int64_t topk, int64_t* out_idx,
                 int64_t* out_n);

}  // namespace pyv4
