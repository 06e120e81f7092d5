// The GPU's copy of one session's KV rows (issue #14 part 3: the KV cache of
// the planned context on the GPU), used by GpuEngine (csrc/cuda/gpu_engine.cu).
// Plain C++ interface.
//
// The host's KVState stays the source of truth: saves, loads, forks and
// truncates are the CPU's own. The device holds the same record bytes
// (RowCodec, spec §4.2) for the rows the plan keeps on the GPU: per layer the
// window ring, the HCA compressed rows, the CSA indexer keys, and CSA
// compressed rows up to a budget (the rest stay in the host's arena and only
// the indexer's top-k of them cross PCIe per step, the offload contract of
// KVState). A step encodes its new rows on the device, attention reads the
// records where they lie (a table of their addresses), and the new records go
// back to the host state at the end of the eval (pinned, asynchronous: one
// copy per eval). Compressed rows and indexer keys are emitted by the host's
// compressors (their rolling state stays there, see gpu_engine.h) and the new
// ones are copied up as they appear. The copy knows which state it holds by
// KVState::stamp (cuda::MirrorBook): after a load, fork, truncate, a step on
// the CPU or a switch to another session it copies the state anew.
#pragma once

#include <cstdint>
#include <memory>

#include "cuda/kv_rows.h"
#include "kv/kv_state.h"

namespace pyv4 {
namespace cuda {

class GpuKV {
 public:
  // csa_budget: CSA compressed rows per layer held on the device (-1: all).
  GpuKV(const ModelConfig& c, int64_t csa_budget);
  ~GpuKV();
  GpuKV(const GpuKV&) = delete;
  GpuKV& operator=(const GpuKV&) = delete;

  // Before an eval of n tokens of kv (after its checks): unless the device
  // holds kv as it is now, copies all it should hold from the host. The copy
  // counts as stale until finish().
  void begin(const KVState& kv, int64_t n);
  // The eval's new rows of layer il (rows [n, head_dim], device) rounded in
  // place to the session's KV type and encoded into their records.
  void encode_chunk(int64_t il, float* rows);
  // After the host's compressors appended rows / keys to layer il: copies the
  // new ones the device holds.
  void copy_appended(int64_t il, const KVState& kv);
  // Device addresses of the records of a.rows (rows beyond the device's
  // budget are copied from the host now) and a.idx, on the device.
  struct Table {
    const uint8_t* const* rows;
    const int32_t* idx;
  };
  Table row_table(int64_t il, const AttnRows& a, const KVState& kv);
  // The compressed rows of layer il held on the device: rows [0, this).
  int64_t comp_on_device(int64_t il) const;
  // The indexer keys of layer il on the device (index_bytes apart) and how many.
  const uint8_t* index_keys(int64_t il) const;
  int64_t index_on_device(int64_t il) const;
  // After layer il's attention: its last `window` new rows into the device ring.
  void store_ring(int64_t il);
  // After the last layer: queues the copy of the new records to the host.
  void queue_write_back();
  // Then (waits for that copy): per layer the snapshots and the window writes
  // of the host state, as attention_forward makes them.
  void write_back(KVState& kv);
  // After end_eval: the device holds kv as it is now.
  void finish(const KVState& kv);
  // After a failed eval: the device holds no known state.
  void invalidate();

  // Device bytes of the rows held (window rings, compressed rows, keys).
  size_t bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cuda
}  // namespace pyv4
