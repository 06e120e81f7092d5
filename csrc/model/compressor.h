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

// Feeds tokens at positions [pos0, pos0 + n) with attention inputs x [n, D] to
// the compressor, and appends one row to `st` for every block they close, so
// that after the call st.n_rows() == (pos0 + n) / ratio.
void compressor_update(const ModelConfig& c, const CompressorWeights& w, const RopeTable& rope,
                       const float* x, int64_t n, int64_t pos0, CompressorState& st,
                       ThreadPool& pool);

}  // namespace pyv4
