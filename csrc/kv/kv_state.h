// Per-session decode state (spec §4.1), kept in fp32.
//
// Everything a session must remember between eval() calls lives here and only
// here: the window ring of raw K=V rows, the compressed rows (CSA / HCA), the
// indexer keys, and each compressor's rolling state (the raw projections of the
// tokens that still feed a future block). The forward pass reaches storage only
// through this interface, so the compressed / memory-mapped cache can replace the
// vectors below without touching csrc/model.
#pragma once

#include <cstdint>
#include <vector>

#include "model/config.h"

namespace pyv4 {

// Rolling state of one compressor: raw kv and gate (ape already added) of the
// tokens at positions [tail_start, tail_start + tail_len), plus emitted rows.
struct CompressorState {
  int64_t width = 0;       // emitted row width
  int64_t proj_width = 0;  // coff * width (per-token projection width)
  int64_t tail_start = 0;
  std::vector<float> tail_kv, tail_gate;  // [tail_len, proj_width]
  std::vector<float> rows;                // [n_rows, width]

  int64_t tail_len() const { return proj_width ? int64_t(tail_kv.size()) / proj_width : 0; }
  int64_t n_rows() const { return width ? int64_t(rows.size()) / width : 0; }
  const float* row(int64_t b) const { return rows.data() + b * width; }
  const float* tail_kv_at(int64_t pos) const { return tail_kv.data() + (pos - tail_start) * proj_width; }
  const float* tail_gate_at(int64_t pos) const { return tail_gate.data() + (pos - tail_start) * proj_width; }
  void push_token(const float* kv, const float* gate);
  void append_row(const float* r);
  void drop_tail_before(int64_t pos);  // forget raw tokens before `pos`
};

struct LayerState {
  std::vector<float> window;  // [window, head_dim] ring; slot = pos % window
  CompressorState comp;        // CSA / HCA compressed KV rows
  CompressorState index_comp;  // CSA indexer keys
};

class KVState {
 public:
  explicit KVState(const ModelConfig& cfg);

  int64_t n_tokens() const { return n_tokens_; }
  void set_n_tokens(int64_t n) { n_tokens_ = n; }
  void reset();

  LayerState& layer(int64_t il) { return layers_[il]; }
  const LayerState& layer(int64_t il) const { return layers_[il]; }

  float* window_row(int64_t il, int64_t pos) {
    return layers_[il].window.data() + (pos % window_) * head_dim_;
  }
  const float* window_row(int64_t il, int64_t pos) const {
    return layers_[il].window.data() + (pos % window_) * head_dim_;
  }

 private:
  int64_t n_tokens_ = 0;
  int64_t window_, head_dim_;
  std::vector<LayerState> layers_;
};

}  // namespace pyv4
