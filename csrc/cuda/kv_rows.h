// Host-side index math of the GPU's KV (csrc/cuda/gpu_kv.h), plain C++
// compiled into every build, so tests/test_cuda_host.py checks it on any CPU:
//
//   * MirrorBook: which rows of one session the device copy holds and which
//     it must still receive (dirty tracking by KVState::stamp, spec §4.1's
//     append-only compressed rows);
//   * ring_runs: where a span's new rows enter the window ring;
//   * plan_attn_rows: the rows a span's queries read (spec §3.4: the window,
//     then the compressed rows: HCA all visible, CSA the indexer's top-k) as
//     references to where each lives on the device or the host, and per query
//     its rows in the CPU's key order (attention_forward, csrc/model/attention.cpp).
#pragma once

#include <cstdint>
#include <vector>

#include "model/config.h"

namespace pyv4 {
namespace cuda {

struct RowRange {
  int64_t first = 0, end = 0;
  int64_t size() const { return end > first ? end - first : 0; }
};

// What the device copy of one session's rows holds. Compressed rows and
// indexer keys are append-only between changes of the stamp, so the copy of a
// current state only ever receives the rows appended since it was made. CSA
// compressed rows beyond the budget stay on the host (the offload contract of
// KVState: only the indexer's top-k of them cross PCIe per step); HCA rows and
// indexer keys are all held.
class MirrorBook {
 public:
  // kinds: per layer; csa_budget: CSA compressed rows per layer the device
  // holds (-1: all of them).
  MirrorBook(std::vector<AttnKind> kinds, int64_t csa_budget);

  // Whether the copy holds exactly the state that has this stamp.
  bool current(uint64_t stamp) const { return stamp_ != 0 && stamp == stamp_; }
  // The copy holds nothing (before a full copy of a state).
  void clear();
  // The copy no longer matches any state (an eval failed midway).
  void invalidate() { stamp_ = 0; }
  // The copy now matches the state with this stamp.
  void mark(uint64_t stamp) { stamp_ = stamp; }

  // The compressed rows / indexer keys of layer il to copy now so that the
  // device holds what it should of host_n rows; counted as held from here on.
  // host_n below what is held is a logic error (a shrink renews the stamp).
  RowRange comp_to_copy(int64_t il, int64_t host_n);
  RowRange index_to_copy(int64_t il, int64_t host_n);
  int64_t comp_held(int64_t il) const { return comp_held_.at(il); }
  int64_t index_held(int64_t il) const { return index_held_.at(il); }
  // How many compressed rows of layer il the device may hold (-1: no limit).
  int64_t comp_limit(int64_t il) const;

 private:
  std::vector<AttnKind> kinds_;
  int64_t csa_budget_;
  uint64_t stamp_ = 0;
  std::vector<int64_t> comp_held_, index_held_;
};

// Rows to allocate for a device array that holds `have` and must hold `need`
// (doubling, at least 64, never more than limit unless limit < 0).
int64_t grow_rows(int64_t have, int64_t need, int64_t limit);

// Where one row a span reads lives.
enum class RowSource : uint8_t {
  Ring = 0,    // the device's window ring, slot `index`
  Chunk = 1,   // the span's own new row `index` (encoded on the device this step)
  Device = 2,  // compressed row `index`, held on the device
  Host = 3,    // compressed row `index`, beyond the device budget: copied this step
};
struct RowRef {
  RowSource src;
  int64_t index;
};

struct AttnRows {
  std::vector<RowRef> rows;    // every row the span reads, once: window, own rows, compressed
  std::vector<int32_t> idx;    // per query its rows (indices into rows), concatenated
  std::vector<int64_t> first;  // query t reads idx[first[t], first[t + 1])
  int64_t window_read = 0;     // stored window rows read (LayerTouch::window)
  int64_t comp_read = 0;       // distinct compressed rows read (LayerTouch::compressed)
};

// The rows of a span of n queries at positions [pos0, pos0 + n) of a layer
// (window rows; kind / ratio: its compression; picked[t]: the CSA top-k of
// query t in row order), compressed rows b < comp_on_device read from the
// device, the others from the host.
AttnRows plan_attn_rows(int64_t pos0, int64_t n, int64_t window, AttnKind kind, int64_t ratio,
                        const std::vector<std::vector<int64_t>>& picked, int64_t comp_on_device);

// The span's new rows that enter a window ring of `window` slots (the last
// min(n, window) of them), as runs of consecutive slots: rows [t, t + len) of
// the span go to slots [slot, slot + len). At most two runs (the ring wraps once).
struct RingRun {
  int64_t t, slot, len;
};
std::vector<RingRun> ring_runs(int64_t pos0, int64_t n, int64_t window);

}  // namespace cuda
}  // namespace pyv4
