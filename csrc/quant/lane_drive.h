// The loops of the lane-layout prefill GEMMs (gemm_lane_avx512.cpp,
// gemm_lane_avx2.cpp) and the cache policy they share: rows packed a panel at
// a time into a thread-local buffer, tokens in register tiles over the panel,
// long rows in column chunks. Anonymous namespace: each including file
// (compiled for its own ISA) keeps its own copy (see tile_drive.h).
#pragma once

#include <xmmintrin.h>  // _mm_prefetch (baseline SSE)

#include <algorithm>
#include <cstdint>

#include "quant/kernels.h"

namespace pyv4 {
namespace qk {
namespace {

// One ISA's tile shape and its cache-sized constants.
struct LaneShape {
  int64_t panel;         // rows a token tile runs over (packed rows in L2)
  int64_t span_rows;     // rows packed at a time when tokens go in blocks
  size_t x_block_bytes;  // activations of a token block (in L2)
  int64_t chunk_groups;  // groups of a column chunk (4096 columns)
  int rows, tokens;      // register tile
};

// Rows [r0, r1) of W times all tokens. pack(r, out) writes row r's packed form
// (ps bytes: ng groups); tile(R, T, pw, t, g0, g1, r) multiplies the R packed
// rows at pw (stride ps, first row r) with tokens t..t+T-1 over groups
// [g0, g1), adding to Y when g0 > 0 (a later column chunk). x_bytes: one
// token's activations.
template <class Pack, class Tile>
void lane_drive(const LaneShape& s, const WeightMatrix& W, int64_t n_tokens, int64_t r0, int64_t r1,
                int64_t ng, size_t ps, size_t x_bytes, Pack&& pack, Tile&& tile) {
  // Cache policy. The packed rows of a panel stay in L2 while every token tile
  // of a block runs over them; a token tile's activations stay in L1 across the
  // panel's row tiles. When all the tokens' activations fit in x_block_bytes
  // (about a third of a 1 MB L2: 96 tokens of 4096 columns), they stay in L2
  // across panels too, and each panel is packed right before use. Beyond that
  // they would stream from L3 once per panel (on AVX-512, 512 tokens ran 5-10 %
  // slower than 128), so span_rows rows are packed first (the span,
  // L3-resident) and the tokens go in blocks that fit, each over every panel.
  // Rows longer than chunk_groups groups (4096 columns) run in column chunks,
  // their sums added to Y: a token tile's activations of one chunk (16 KB) then
  // stay in L1 while the row tiles' weights stream past from L2. With whole
  // 8192-column rows they did not (32 KB of activations + 40 KB of weights per
  // row tile), and [4096x8192] ran at 416 Gops/s on one AVX-512 thread against
  // 521 for [4096x4096]; chunked, 496.
  const int64_t kT = s.tokens;
  const int64_t tok_block = std::max<int64_t>(kT, static_cast<int64_t>(s.x_block_bytes / x_bytes) / kT * kT);
  const int64_t span_rows = n_tokens <= tok_block ? s.panel : s.span_rows;
  uint8_t* packed = scratch_bytes(ps * span_rows);
  for (int64_t r = r0; r < r1; r += span_rows) {
    const int64_t n = std::min<int64_t>(r1 - r, span_rows);
    // A model's weights come from DRAM, and packing a panel stalled on them:
    // when a span is one panel, the next panel's rows are prefetched into L2,
    // a share per token tile, while this one computes. Measured on AVX-512 with
    // weights far larger than L3, 2 threads: 9-32 tokens +9-33 % (Q8_0 rows of
    // 4096+ columns: no change); with L3-resident weights it costs 6-10 % at 12.
    const uint8_t* next = nullptr;
    int64_t next_lines = 0, lines_per_tile = 0;
    if (span_rows == s.panel && r + n < r1) {
      const int64_t tiles = (n_tokens + kT - 1) / kT;
      next = W.row(r + n);
      next_lines = (std::min<int64_t>(r1 - r - n, s.panel) * static_cast<int64_t>(W.row_stride) + 63) / 64;
      lines_per_tile = (next_lines + tiles - 1) / tiles;
    }
    for (int64_t i = 0; i < n; ++i) pack(r + i, packed + i * ps);
    for (int64_t tb = 0; tb < n_tokens; tb += tok_block) {
      const int64_t te = std::min<int64_t>(n_tokens, tb + tok_block);
      for (int64_t p = 0; p < n; p += s.panel) {
        const int64_t pn = std::min<int64_t>(n - p, s.panel);
        for (int64_t g0 = 0; g0 < ng; g0 += s.chunk_groups) {
          const int64_t g1 = std::min<int64_t>(ng, g0 + s.chunk_groups);
          for (int64_t t = tb; t < te; t += kT) {
            const int tt = static_cast<int>(std::min<int64_t>(te - t, kT));
            if (g0 == 0)
              for (int64_t l = (t / kT) * lines_per_tile, le = std::min(next_lines, l + lines_per_tile);
                   l < le; ++l)
                _mm_prefetch(reinterpret_cast<const char*>(next + 64 * l), _MM_HINT_T1);
            for (int64_t i = p; i < p + pn; i += s.rows)
              tile(static_cast<int>(std::min<int64_t>(p + pn - i, s.rows)), tt, packed + i * ps, t, g0, g1,
                   r + i);
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace qk
}  // namespace pyv4
