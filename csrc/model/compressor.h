// KV compressors (spec §3.5, §3.6): pool every `ratio` tokens of a layer's
// attention input into one row. CSA (ratio 4) pools 8 overlapping slots (series
// A of the previous block + series B of this one); HCA pools its own block.
#pragma once

#include <cstdint>

#include "common/thread_pool.h"
#include "kv/kv_state.h"
#include "model/ops.h"
#include "model/weights.h"

namespace pyv4 {

// The compressor's token projections of attention inputs x [n, D]: pkv and
// gate, [n, proj_width] each (the matmuls; a batched step runs them once for
// every session's rows).
void compressor_project(const ModelConfig& c, const CompressorWeights& w, const float* x, int64_t n,
                        float* pkv, float* gate, bool indexer, ThreadPool& pool);

// Feeds the projections pkv / gate [n, proj_width] of the tokens at positions
// [pos0, pos0 + n) to the layer's main compressor (indexer = false) or indexer
// compressor, and appends one row to the session's stream for every block they
// close, rounded to the session's KV type (spec §3.5, §3.6), so that afterwards
// the stream holds (pos0 + n) / ratio rows. At every snapshot position it
// records the rolling state for KVState::commit_snapshots.
void compressor_update(const ModelConfig& c, const CompressorWeights& w, const RopeTable& rope,
                       const float* pkv, float* gate, int64_t n, int64_t pos0, KVState& kv,
                       int64_t il, bool indexer);

}  // namespace pyv4
