// One attention block (spec §3.4): Q/KV projections, the layer's compressors
// and Lightning indexer, a softmax with sink over window ∪ visible compressed
// rows, inverse RoPE, and the grouped low-rank output projection.
#pragma once

#include <cstdint>
#include <vector>

#include "common/thread_pool.h"
#include "kv/kv_state.h"
#include "model/ops.h"
#include "model/weights.h"

namespace pyv4 {

// One session's rows in a batched step: rows [row0, row0 + n) of the batch are
// its tokens at positions [pos0, pos0 + n).
struct SeqSpan {
  KVState* kv;
  int64_t row0, n, pos0;
};

// x: attention inputs [n_rows, D] of every session of the batch, out: [n_rows, D].
// The projections (Q, KV, compressors, indexer, output) read each weight matrix
// once for all rows; the rest (compressor state, indexer scoring, attention over
// cached rows, window/snapshot writes) runs per session on its own state. Each
// session gets the result it would get alone (bitwise in reference mode). Reads
// and updates the layer's state in each kv, and records the rows it touched in
// kv->layer(il).touch.
void attention_forward(const ModelConfig& c, const LayerWeights& w, int64_t il,
                       const RopeTable& rope, const float* x, const SeqSpan* seqs, int64_t n_seqs,
                       int64_t n_rows, float* out, ThreadPool& pool);

// The Lightning indexer of a CSA layer (spec §3.6), after its compressor has
// taken the span's tokens: for each query of one session's span, the top-k of
// its visible compressed blocks, in row order. qI [n, nih·ihd] / wI [n, nih]:
// the indexer's query and head-weight projections of the span's rows (RoPE,
// the KV type's query rounding and the score scales are applied here, in
// place). Also used by the GPU path (csrc/cuda/gpu_engine.cu).
std::vector<std::vector<int64_t>> indexer_select(const ModelConfig& c, const LayerWeights& w, int64_t il,
                                                 const RopeTable& rope, float* qI, float* wI, const SeqSpan& sp,
                                                 ThreadPool& pool);

// Indexer selection for one query (spec §3.6): the top-k of the visible blocks
// [0, n_visible) by score, ties to the lower block index; k = min(topk, n_visible).
void select_topk(const float* scores, int64_t n_visible, int64_t topk, int64_t* out_idx,
                 int64_t* out_n);

}  // namespace pyv4
