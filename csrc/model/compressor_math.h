// The per-channel pooling of a compressor block (spec §3.5, §3.6) as a
// function the CPU (csrc/model/compressor.cpp) and the GPU
// (csrc/cuda/compressor.cu) both run: a softmax over the block's slots of the
// gate logits, the kv values weighted by it. Plain float operations in a fixed
// order (expf is std::exp(float) on the host), so both sides agree.
#pragma once

#include <cmath>
#include <cstdint>

#include "quant/blocks.h"  // PYV4_HD

namespace pyv4 {
namespace compressor_math {

// Channel ch of block b of a compressor of ratio m and row width `width`,
// from the raw projections kv / gate (ape added) of the tokens at positions
// [tail_start, ...), rows of pw floats. Slots: CSA (overlap) = series A
// (channels [0, width)) of block b-1's tokens, then series B (channels
// [width, 2 width)) of block b's; block 0 has no A slots (weight 0). HCA: its
// own block's tokens.
static inline PYV4_HD float pool_channel(const float* kv, const float* gate, int64_t tail_start, int64_t pw,
                                         int64_t b, int64_t m, int64_t width, bool overlap, int64_t ch) {
  const int64_t a0 = overlap && b > 0 ? (b - 1) * m : b * m;  // first slot's position
  const int64_t end = (b + 1) * m;
  // Slot q's element: series A (offset 0) before b·m, series B after.
  auto at = [&](const float* base, int64_t q) {
    const int64_t off = overlap && q >= b * m ? width : 0;
    return base[(q - tail_start) * pw + off + ch];
  };
  float mx = -INFINITY;
  for (int64_t q = a0; q < end; ++q) mx = mx < at(gate, q) ? at(gate, q) : mx;  // std::max
  float sum = 0.0f;
  for (int64_t q = a0; q < end; ++q) sum += expf(at(gate, q) - mx);
  float acc = 0.0f;
  for (int64_t q = a0; q < end; ++q) acc += at(kv, q) * (expf(at(gate, q) - mx) / sum);
  return acc;
}

}  // namespace compressor_math
}  // namespace pyv4
