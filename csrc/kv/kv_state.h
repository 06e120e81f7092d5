// Per-session decode state (spec §4.1), stored as spec §4.2 describes.
//
// Everything a session must remember between eval() calls lives here and only
// here:
//   * per layer, a window ring of `window` K=V rows (slot = pos mod window);
//   * CSA / HCA compressed rows and CSA indexer keys, append-only, row b at
//     (layer, b);
//   * each compressor's rolling state (raw projections of the tokens that still
//     feed a future block, incl. the CSA overlap carry), kept in fp32;
//   * the token ids, and every `snap_every` tokens a snapshot per layer of the
//     window ring and rolling state, so truncate() re-prefills < snap_every tokens.
// Rows are kept in the session's KVType (csrc/kv/qat.h) in chunks of an Arena
// (csrc/kv/arena.h): a memory-mapped file, shared copy-on-write with forks.
// The forward pass reads and writes rows only through the accessors below and
// never copies the cache; it records which rows it touched (offload contract:
// a decode step touches the window, the HCA rows, the indexer keys, and only
// the top-k selected CSA rows).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kv/arena.h"
#include "kv/qat.h"
#include "model/config.h"

namespace pyv4 {

// A sequence of fixed-size records in arena chunks; record i is at chunk
// i / per_chunk. Appends and writes copy a shared chunk first.
struct RowStream {
  size_t rec = 0;
  int64_t per_chunk = 0;
  int64_t n = 0;
  std::vector<int64_t> chunks;

  const uint8_t* at(const Arena& a, int64_t i) const {
    return a.data(chunks[i / per_chunk]) + static_cast<size_t>(i % per_chunk) * rec;
  }
  uint8_t* write(Arena& a, int64_t i);  // i <= n; i == n appends
  void resize(Arena& a, int64_t new_n);  // shrink (releases whole chunks) or grow
  void retain_all(Arena& a) const;
  void release_all(Arena& a);
  size_t bytes() const { return static_cast<size_t>(n) * rec; }
};

// Rolling state of one compressor: raw kv and gate (ape already added) of the
// tokens at positions [tail_start, tail_start + tail_len), fp32.
struct CompressorState {
  int64_t ratio = 0;
  int64_t width = 0;       // emitted row width
  int64_t proj_width = 0;  // coff * width (per-token projection width)
  int64_t tail_start = 0;
  std::vector<float> tail_kv, tail_gate;  // [tail_len, proj_width]
  // Tail images taken during the current eval at snapshot positions (see
  // KVState::commit_snapshots).
  struct Pending {
    int64_t pos, tail_start;
    std::vector<float> kv, gate;
  };
  std::vector<Pending> pending;

  int64_t tail_len() const { return proj_width ? int64_t(tail_kv.size()) / proj_width : 0; }
  const float* tail_kv_at(int64_t pos) const { return tail_kv.data() + (pos - tail_start) * proj_width; }
  const float* tail_gate_at(int64_t pos) const { return tail_gate.data() + (pos - tail_start) * proj_width; }
  void push_token(const float* kv, const float* gate);
  void drop_tail_before(int64_t pos);  // forget raw tokens before `pos`
  void clear_tail(int64_t start);
  int64_t snapshot_cap(int64_t snap_every, bool overlap) const;  // max tail_len at a snapshot
};

// Rows touched by the last eval in one layer (stats; offload contract).
struct LayerTouch {
  int64_t window = 0;      // stored window rows read (the chunk's own rows not counted)
  int64_t compressed = 0;  // distinct compressed rows read by attention
  int64_t index_keys = 0;  // indexer keys scored (distinct)
};

struct LayerState {
  AttnKind kind = AttnKind::Sliding;
  RowStream window, comp, index, snaps;
  CompressorState comp_tail, index_tail;
  LayerTouch touch;
};

class KVState {
 public:
  static constexpr int64_t kDefaultSnapEvery = 128;

  // path: backing file ("" = unlinked temporary file).
  KVState(const ModelConfig& cfg, KVType type, const std::string& path = "",
          int64_t snap_every = kDefaultSnapEvery);
  ~KVState();
  KVState(const KVState&) = delete;
  KVState& operator=(const KVState&) = delete;

  // A new session with the same contents sharing every chunk copy-on-write.
  std::unique_ptr<KVState> fork() const;

  KVType type() const { return type_; }
  int64_t n_tokens() const { return n_tokens_; }
  const std::vector<int32_t>& tokens() const { return tokens_; }
  int64_t snap_every() const { return snap_every_; }
  void reset();

  // A value this state never had before and no other state ever has: renewed
  // by every change made through the methods below (and at the end of each
  // eval), so a copy of the rows kept elsewhere (the GPU's mirror,
  // csrc/cuda/gpu_kv.h) is current exactly while stamp() is what it was when
  // the copy was made. A fork or a loaded session is a new state: a new stamp.
  uint64_t stamp() const { return stamp_; }

  const RowCodec& main_codec() const { return main_; }
  const RowCodec& index_codec() const { return index_; }
  LayerState& layer(int64_t il) { return layers_[il]; }
  const LayerState& layer(int64_t il) const { return layers_[il]; }
  int64_t n_layer() const { return static_cast<int64_t>(layers_.size()); }

  // ---- rows (encoded records; decode with main_codec() / index_codec()) ----
  const uint8_t* window_rec(int64_t il, int64_t pos) const {
    return layers_[il].window.at(*arena_, pos % window_);
  }
  void write_window(int64_t il, int64_t pos, const float* rounded_row);
  // The same with the row already encoded (main_codec().bytes; the GPU writes
  // back the records it encoded).
  void write_window_record(int64_t il, int64_t pos, const uint8_t* rec);
  int64_t n_rows(int64_t il) const { return layers_[il].comp.n; }
  const uint8_t* comp_rec(int64_t il, int64_t b) const { return layers_[il].comp.at(*arena_, b); }
  void append_comp(int64_t il, const float* rounded_row);
  int64_t n_index(int64_t il) const { return layers_[il].index.n; }
  const uint8_t* index_rec(int64_t il, int64_t b) const { return layers_[il].index.at(*arena_, b); }
  void append_index(int64_t il, const float* rounded_row);

  // ---- eval bookkeeping (called by Engine::eval / attention_forward) ----
  void begin_eval();
  // Writes the snapshots for positions s in (pos0, pos0 + n], s % snap_every == 0,
  // of layer il: the window ring image at s (from the ring and the chunk's rows
  // `chunk_rows` [n, head_dim], already rounded) and the compressor tails the
  // compressors recorded in `pending`. Call before the chunk enters the ring.
  void commit_snapshots(int64_t il, int64_t pos0, int64_t n, const float* chunk_rows);
  void end_eval(const int64_t* tokens, int64_t n);

  // Restores the state at the latest snapshot position s <= n (0 = empty) and
  // returns s; tokens [s, n) must then be evaluated again (Engine::truncate).
  int64_t restore_before(int64_t n);

  // Benchmarks only: makes an empty session hold n tokens (n a multiple of
  // snap_every and of every ratio) of synthetic rows — random values through the
  // KV type's rounding, zero token ids and snapshots, consistent rolling state —
  // to reach long contexts without an O(n²) prefill. Logits are meaningless.
  void fill_synthetic(int64_t n, uint64_t seed);

  // ---- accounting ----
  size_t kv_bytes() const;        // window + compressed + indexer records in use
  size_t snapshot_bytes() const;  // snapshot records
  size_t state_bytes() const;     // fp32 rolling state (tails)
  size_t file_bytes() const { return arena_->file_bytes(); }
  size_t chunk_bytes() const { return arena_->chunk_bytes(); }

 private:
  friend class SessionFile;
  KVState(const ModelConfig& cfg, KVType type, std::shared_ptr<Arena> arena, int64_t snap_every);
  size_t snap_record_bytes(const LayerState& L) const;
  void write_tail(uint8_t* dst, const CompressorState& st, int64_t cap, int64_t tail_start,
                  const std::vector<float>& kv, const std::vector<float>& gate) const;
  void read_tail(const uint8_t* src, CompressorState& st, int64_t cap) const;
  void renew_stamp();
  uint8_t* window_slot(int64_t il, int64_t pos);  // writable ring slot of pos

  ModelConfig cfg_;
  KVType type_;
  RowCodec main_, index_;
  int64_t window_, head_dim_, snap_every_;
  std::shared_ptr<Arena> arena_;
  int64_t n_tokens_ = 0;
  uint64_t stamp_ = 0;
  std::vector<int32_t> tokens_;
  std::vector<LayerState> layers_;
};

// Chunk size for a model: a power of two >= 64 KiB holding >= 2 of the largest
// record (a snapshot); the same for a model whatever the session.
size_t kv_chunk_bytes(const ModelConfig& cfg, KVType type, int64_t snap_every);

}  // namespace pyv4
