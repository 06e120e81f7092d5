#include "kv/kv_state.h"

#include <algorithm>

namespace pyv4 {

void CompressorState::push_token(const float* kv, const float* gate) {
  tail_kv.insert(tail_kv.end(), kv, kv + proj_width);
  tail_gate.insert(tail_gate.end(), gate, gate + proj_width);
}

void CompressorState::append_row(const float* r) { rows.insert(rows.end(), r, r + width); }

void CompressorState::drop_tail_before(int64_t pos) {
  const int64_t n = std::min(tail_len(), std::max<int64_t>(0, pos - tail_start));
  if (n <= 0) return;
  tail_kv.erase(tail_kv.begin(), tail_kv.begin() + n * proj_width);
  tail_gate.erase(tail_gate.begin(), tail_gate.begin() + n * proj_width);
  tail_start += n;
}

KVState::KVState(const ModelConfig& cfg) : window_(cfg.window), head_dim_(cfg.head_dim) {
  layers_.resize(cfg.n_layer);
  for (int64_t il = 0; il < cfg.n_layer; ++il) {
    LayerState& L = layers_[il];
    L.window.assign(static_cast<size_t>(window_ * head_dim_), 0.0f);
    const AttnKind kind = cfg.kind(il);
    if (kind != AttnKind::Sliding) {
      L.comp.width = cfg.head_dim;
      L.comp.proj_width = (kind == AttnKind::CSA ? 2 : 1) * cfg.head_dim;
    }
    if (kind == AttnKind::CSA) {
      L.index_comp.width = cfg.index_head_dim;
      L.index_comp.proj_width = 2 * cfg.index_head_dim;
    }
  }
}

void KVState::reset() {
  n_tokens_ = 0;
  for (LayerState& L : layers_) {
    std::fill(L.window.begin(), L.window.end(), 0.0f);
    for (CompressorState* c : {&L.comp, &L.index_comp}) {
      c->tail_start = 0;
      c->tail_kv.clear();
      c->tail_gate.clear();
      c->rows.clear();
    }
  }
}

}  // namespace pyv4
