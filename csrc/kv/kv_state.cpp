#include "kv/kv_state.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <random>

#include "common/error.h"

namespace pyv4 {

// ---- RowStream --------------------------------------------------------------

uint8_t* RowStream::write(Arena& a, int64_t i) {
  const int64_t c = i / per_chunk;
  if (c == static_cast<int64_t>(chunks.size())) {
    chunks.push_back(a.alloc());
  } else {
    chunks[c] = a.make_writable(chunks[c]);  // copy-on-write if shared
  }
  if (i >= n) n = i + 1;
  return a.wdata(chunks[c]) + static_cast<size_t>(i % per_chunk) * rec;
}

void RowStream::resize(Arena& a, int64_t new_n) {
  const int64_t keep = (new_n + per_chunk - 1) / per_chunk;
  while (static_cast<int64_t>(chunks.size()) > keep) {
    a.release(chunks.back());
    chunks.pop_back();
  }
  n = new_n;
}

void RowStream::retain_all(Arena& a) const {
  for (int64_t c : chunks) a.retain(c);
}

void RowStream::release_all(Arena& a) {
  for (int64_t c : chunks) a.release(c);
  chunks.clear();
  n = 0;
}

// ---- CompressorState ----------------------------------------------------------

void CompressorState::push_token(const float* kv, const float* gate) {
  tail_kv.insert(tail_kv.end(), kv, kv + proj_width);
  tail_gate.insert(tail_gate.end(), gate, gate + proj_width);
}

void CompressorState::drop_tail_before(int64_t pos) {
  const int64_t n = std::min(tail_len(), std::max<int64_t>(0, pos - tail_start));
  if (n <= 0) return;
  tail_kv.erase(tail_kv.begin(), tail_kv.begin() + n * proj_width);
  tail_gate.erase(tail_gate.begin(), tail_gate.begin() + n * proj_width);
  tail_start += n;
}

void CompressorState::clear_tail(int64_t start) {
  tail_kv.clear();
  tail_gate.clear();
  tail_start = start;
  pending.clear();
}

int64_t CompressorState::snapshot_cap(int64_t snap_every, bool overlap) const {
  if (proj_width == 0) return 0;
  // At a position s the tail holds [s - s % m, s) plus, for CSA, the previous
  // block's m tokens (its series A feeds the next block, spec §3.5).
  const bool aligned = snap_every % ratio == 0;
  if (overlap) return aligned ? ratio : 2 * ratio - 1;
  return aligned ? 0 : ratio - 1;
}

// ---- KVState ------------------------------------------------------------------

void KVState::renew_stamp() {
  static std::atomic<uint64_t> next{1};
  stamp_ = next.fetch_add(1, std::memory_order_relaxed);
}

size_t kv_chunk_bytes(const ModelConfig& cfg, KVType type, int64_t snap_every) {
  // Largest record: a CSA snapshot (window image + both tails); sized without a
  // KVState so a saved file's chunk size can be checked against the model.
  const RowCodec m = RowCodec::make(type, RowCodec::Kind::Main, cfg.head_dim, cfg.rope_dim);
  size_t largest = 0;
  for (int64_t il = 0; il < cfg.n_layer; ++il) {
    size_t rec = static_cast<size_t>(cfg.window) * m.bytes;
    const int64_t r = cfg.compress_ratio[il];
    if (r != 0) {
      const bool csa = r == 4;
      const int64_t pw = (csa ? 2 : 1) * cfg.head_dim;
      const bool aligned = snap_every % r == 0;
      const int64_t cap = csa ? (aligned ? r : 2 * r - 1) : (aligned ? 0 : r - 1);
      rec += 16 + static_cast<size_t>(cap * pw) * 8;
      if (csa) rec += 16 + static_cast<size_t>((aligned ? r : 2 * r - 1) * 2 * cfg.index_head_dim) * 8;
    }
    largest = std::max(largest, rec);
  }
  size_t c = size_t(1) << 16;
  while (c < 2 * largest) c *= 2;
  return c;
}

KVState::KVState(const ModelConfig& cfg, KVType type, const std::string& path, int64_t snap_every)
    : KVState(cfg, type, std::make_shared<Arena>(path, kv_chunk_bytes(cfg, type, snap_every)),
              snap_every) {}

KVState::KVState(const ModelConfig& cfg, KVType type, std::shared_ptr<Arena> arena, int64_t snap_every)
    : cfg_(cfg),
      type_(type),
      main_(RowCodec::make(type, RowCodec::Kind::Main, cfg.head_dim, cfg.rope_dim)),
      window_(cfg.window),
      head_dim_(cfg.head_dim),
      snap_every_(snap_every),
      arena_(std::move(arena)) {
  renew_stamp();
  if (snap_every <= 0) throw InputError("snapshot interval must be positive");
  bool any_csa = false;
  for (int64_t il = 0; il < cfg.n_layer; ++il) any_csa |= cfg.kind(il) == AttnKind::CSA;
  index_ = any_csa ? RowCodec::make(type, RowCodec::Kind::Index, cfg.index_head_dim, 0)
                   : RowCodec::make(KVType::F32, RowCodec::Kind::Index, cfg.index_head_dim, 0);
  const size_t chunk = arena_->chunk_bytes();
  layers_.resize(cfg.n_layer);
  for (int64_t il = 0; il < cfg.n_layer; ++il) {
    LayerState& L = layers_[il];
    L.kind = cfg.kind(il);
    auto setup = [&](RowStream& s, size_t rec) {
      s.rec = rec;
      s.per_chunk = static_cast<int64_t>(chunk / rec);
    };
    setup(L.window, main_.bytes);
    if (L.kind != AttnKind::Sliding) {
      setup(L.comp, main_.bytes);
      L.comp_tail.ratio = cfg.compress_ratio[il];
      L.comp_tail.width = cfg.head_dim;
      L.comp_tail.proj_width = (L.kind == AttnKind::CSA ? 2 : 1) * cfg.head_dim;
    }
    if (L.kind == AttnKind::CSA) {
      setup(L.index, index_.bytes);
      L.index_tail.ratio = cfg.compress_ratio[il];
      L.index_tail.width = cfg.index_head_dim;
      L.index_tail.proj_width = 2 * cfg.index_head_dim;
    }
    setup(L.snaps, snap_record_bytes(L));
  }
}

KVState::~KVState() {
  for (LayerState& L : layers_) {
    for (RowStream* s : {&L.window, &L.comp, &L.index, &L.snaps}) s->release_all(*arena_);
  }
}

std::unique_ptr<KVState> KVState::fork() const {
  std::unique_ptr<KVState> f(new KVState(cfg_, type_, arena_, snap_every_));
  f->n_tokens_ = n_tokens_;
  f->tokens_ = tokens_;
  for (int64_t il = 0; il < n_layer(); ++il) {
    const LayerState& src = layers_[il];
    LayerState& dst = f->layers_[il];
    for (auto [s, d] : {std::pair{&src.window, &dst.window}, {&src.comp, &dst.comp},
                        {&src.index, &dst.index}, {&src.snaps, &dst.snaps}}) {
      *d = *s;
      d->retain_all(*arena_);
    }
    dst.comp_tail = src.comp_tail;
    dst.index_tail = src.index_tail;
  }
  return f;
}

void KVState::reset() {
  renew_stamp();
  n_tokens_ = 0;
  tokens_.clear();
  for (LayerState& L : layers_) {
    for (RowStream* s : {&L.window, &L.comp, &L.index, &L.snaps}) s->release_all(*arena_);
    L.comp_tail.clear_tail(0);
    L.index_tail.clear_tail(0);
    L.touch = LayerTouch{};
  }
}

uint8_t* KVState::window_slot(int64_t il, int64_t pos) {
  renew_stamp();
  RowStream& w = layers_[il].window;
  const int64_t slot = pos % window_;
  // The ring is materialised lazily up to `window` records.
  while (w.n < slot) std::memset(w.write(*arena_, w.n), 0, w.rec);
  return w.write(*arena_, slot);
}

void KVState::write_window(int64_t il, int64_t pos, const float* row) { main_.encode(row, window_slot(il, pos)); }

void KVState::write_window_record(int64_t il, int64_t pos, const uint8_t* rec) {
  std::memcpy(window_slot(il, pos), rec, main_.bytes);
}

void KVState::append_comp(int64_t il, const float* row) {
  renew_stamp();
  RowStream& s = layers_[il].comp;
  main_.encode(row, s.write(*arena_, s.n));
}

void KVState::append_index(int64_t il, const float* row) {
  renew_stamp();
  RowStream& s = layers_[il].index;
  index_.encode(row, s.write(*arena_, s.n));
}

// Snapshot record of a layer: [window ring image: window × main record]
// [comp tail][index tail], a tail being {i64 tail_start, i64 len, kv[cap×pw],
// gate[cap×pw]} in fp32 (spec §4.1: the rolling state is saved exactly).
size_t KVState::snap_record_bytes(const LayerState& L) const {
  size_t b = static_cast<size_t>(window_) * main_.bytes;
  for (const CompressorState* c : {&L.comp_tail, &L.index_tail}) {
    if (c->proj_width == 0) continue;
    b += 16 + static_cast<size_t>(c->snapshot_cap(snap_every_, L.kind == AttnKind::CSA) * c->proj_width) * 8;
  }
  return b;
}

void KVState::write_tail(uint8_t* dst, const CompressorState& st, int64_t cap, int64_t tail_start,
                         const std::vector<float>& kv, const std::vector<float>& gate) const {
  const int64_t len = st.proj_width ? static_cast<int64_t>(kv.size()) / st.proj_width : 0;
  if (len > cap) throw std::logic_error("compressor tail larger than its snapshot slot");
  std::memcpy(dst, &tail_start, 8);
  std::memcpy(dst + 8, &len, 8);
  const size_t slab = static_cast<size_t>(cap * st.proj_width) * 4;
  std::memcpy(dst + 16, kv.data(), kv.size() * 4);
  std::memcpy(dst + 16 + slab, gate.data(), gate.size() * 4);
}

void KVState::read_tail(const uint8_t* src, CompressorState& st, int64_t cap) const {
  int64_t start, len;
  std::memcpy(&start, src, 8);
  std::memcpy(&len, src + 8, 8);
  const size_t slab = static_cast<size_t>(cap * st.proj_width) * 4;
  st.tail_start = start;
  st.tail_kv.resize(static_cast<size_t>(len * st.proj_width));
  st.tail_gate.resize(st.tail_kv.size());
  std::memcpy(st.tail_kv.data(), src + 16, st.tail_kv.size() * 4);
  std::memcpy(st.tail_gate.data(), src + 16 + slab, st.tail_gate.size() * 4);
  st.pending.clear();
}

void KVState::begin_eval() {
  for (LayerState& L : layers_) {
    L.touch = LayerTouch{};
    L.comp_tail.pending.clear();
    L.index_tail.pending.clear();
  }
}

void KVState::commit_snapshots(int64_t il, int64_t pos0, int64_t n, const float* chunk_rows) {
  renew_stamp();
  LayerState& L = layers_[il];
  const bool csa = L.kind == AttnKind::CSA;
  size_t ip = 0, jp = 0;  // next pending tail image of comp / index
  for (int64_t s = (pos0 / snap_every_ + 1) * snap_every_; s <= pos0 + n; s += snap_every_) {
    const int64_t k = s / snap_every_ - 1;  // snapshot k is at position (k + 1) · snap_every
    if (L.snaps.n != k) throw std::logic_error("snapshot sequence out of step");
    uint8_t* rec = L.snaps.write(*arena_, k);
    // Ring image at s: slot j holds the latest position p < s with p ≡ j (mod window).
    for (int64_t j = 0; j < window_; ++j) {
      int64_t p = s - 1 - ((s - 1 - j) % window_ + window_) % window_;
      uint8_t* dst = rec + static_cast<size_t>(j) * main_.bytes;
      if (p < 0) {
        std::memset(dst, 0, main_.bytes);
      } else if (p >= pos0) {
        main_.encode(chunk_rows + (p - pos0) * head_dim_, dst);
      } else {
        std::memcpy(dst, window_rec(il, p), main_.bytes);
      }
    }
    uint8_t* cur = rec + static_cast<size_t>(window_) * main_.bytes;
    int idx = 0;
    for (CompressorState* c : {&L.comp_tail, &L.index_tail}) {
      if (c->proj_width == 0) continue;
      size_t& next = idx++ == 0 ? ip : jp;
      const int64_t cap = c->snapshot_cap(snap_every_, csa);
      if (next >= c->pending.size() || c->pending[next].pos != s) {
        throw std::logic_error("compressor did not record the snapshot tail");
      }
      const CompressorState::Pending& pt = c->pending[next++];
      write_tail(cur, *c, cap, pt.tail_start, pt.kv, pt.gate);
      cur += 16 + static_cast<size_t>(cap * c->proj_width) * 8;
    }
  }
  L.comp_tail.pending.clear();
  L.index_tail.pending.clear();
}

void KVState::end_eval(const int64_t* tokens, int64_t n) {
  renew_stamp();
  for (int64_t t = 0; t < n; ++t) tokens_.push_back(static_cast<int32_t>(tokens[t]));
  n_tokens_ += n;
}

int64_t KVState::restore_before(int64_t n) {
  if (n < 0 || n > n_tokens_) {
    throw InputError("truncate: n_tokens must be in [0, " + std::to_string(n_tokens_) + "], got " +
                     std::to_string(n));
  }
  renew_stamp();
  const int64_t s = n / snap_every_ * snap_every_;
  if (s == 0) {
    reset();
    return 0;
  }
  const int64_t k = s / snap_every_ - 1;
  for (int64_t il = 0; il < n_layer(); ++il) {
    LayerState& L = layers_[il];
    const uint8_t* rec = L.snaps.at(*arena_, k);
    L.window.resize(*arena_, std::min(L.window.n, window_));
    for (int64_t j = 0; j < window_; ++j) {
      std::memcpy(L.window.write(*arena_, j), rec + static_cast<size_t>(j) * main_.bytes, main_.bytes);
    }
    const uint8_t* cur = rec + static_cast<size_t>(window_) * main_.bytes;
    for (CompressorState* c : {&L.comp_tail, &L.index_tail}) {
      if (c->proj_width == 0) continue;
      const int64_t cap = c->snapshot_cap(snap_every_, L.kind == AttnKind::CSA);
      read_tail(cur, *c, cap);
      cur += 16 + static_cast<size_t>(cap * c->proj_width) * 8;
    }
    if (L.kind != AttnKind::Sliding) L.comp.resize(*arena_, s / L.comp_tail.ratio);
    if (L.kind == AttnKind::CSA) L.index.resize(*arena_, s / L.index_tail.ratio);
    L.snaps.resize(*arena_, k + 1);
  }
  tokens_.resize(s);
  n_tokens_ = s;
  return s;
}

void KVState::fill_synthetic(int64_t n, uint64_t seed) {
  if (n_tokens_ != 0) throw InputError("fill_synthetic needs an empty session");
  renew_stamp();
  if (n <= 0 || n % snap_every_ != 0) throw InputError("fill_synthetic: n must be a multiple of the snapshot interval");
  for (const LayerState& L : layers_) {
    if (L.comp_tail.ratio && n % L.comp_tail.ratio != 0) throw InputError("fill_synthetic: n must be a multiple of every ratio");
  }
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> row(std::max(head_dim_, index_.width));
  auto random_row = [&](int64_t w) {
    for (int64_t i = 0; i < w; ++i) row[i] = nd(rng);
  };
  for (int64_t il = 0; il < n_layer(); ++il) {
    LayerState& L = layers_[il];
    for (int64_t j = 0; j < window_; ++j) {
      random_row(head_dim_);
      main_.round(row.data());
      write_window(il, n - window_ + j, row.data());
    }
    if (L.kind != AttnKind::Sliding) {
      for (int64_t b = 0; b < n / L.comp_tail.ratio; ++b) {
        random_row(head_dim_);
        main_.round(row.data());
        append_comp(il, row.data());
      }
    }
    if (L.kind == AttnKind::CSA) {
      for (int64_t b = 0; b < n / L.index_tail.ratio; ++b) {
        random_row(index_.width);
        index_.round(row.data());
        append_index(il, row.data());
      }
    }
    for (CompressorState* c : {&L.comp_tail, &L.index_tail}) {
      if (c->proj_width == 0) continue;
      const int64_t len = L.kind == AttnKind::CSA ? c->ratio : 0;  // CSA keeps the last block's series A
      c->tail_start = n - len;
      c->tail_kv.assign(static_cast<size_t>(len * c->proj_width), 0.0f);
      c->tail_gate.assign(c->tail_kv.size(), 0.0f);
      for (float& v : c->tail_kv) v = nd(rng);
    }
    for (int64_t k = 0; k < n / snap_every_; ++k) std::memset(L.snaps.write(*arena_, k), 0, L.snaps.rec);
  }
  tokens_.assign(static_cast<size_t>(n), 0);
  n_tokens_ = n;
}

size_t KVState::kv_bytes() const {
  size_t b = 0;
  for (const LayerState& L : layers_) b += L.window.bytes() + L.comp.bytes() + L.index.bytes();
  return b;
}

size_t KVState::snapshot_bytes() const {
  size_t b = 0;
  for (const LayerState& L : layers_) b += L.snaps.bytes();
  return b;
}

size_t KVState::state_bytes() const {
  size_t b = 0;
  for (const LayerState& L : layers_) {
    b += (L.comp_tail.tail_kv.size() + L.comp_tail.tail_gate.size() + L.index_tail.tail_kv.size() +
          L.index_tail.tail_gate.size()) * 4;
  }
  return b;
}

}  // namespace pyv4
