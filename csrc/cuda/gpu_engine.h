// The model's forward pass on the GPU (issue #14 part 3, hybrid execution),
// beside a loaded CPU Engine (csrc/model/engine.h), which stays the reference:
// every step follows Engine::eval_batch / attention_forward / moe_forward in
// the same order. Plain C++ interface (csrc/cuda/gpu_engine.cu).
//
// On the GPU (uploaded at construction, GGML rows; split copies are restored):
// every weight but the embedding table and the routed experts the caller
// keeps on the host, i.e. mHC, norms, attention projections, compressor and
// indexer projections, output, router, shared expert, head. Per layer the GPU
// runs mHC, the norms, the projections, RoPE, the sink-softmax attention over
// window ∪ compressed rows, inverse RoPE, the output, the router, the shared
// expert and the routed experts placed on it; the routed experts kept on the
// host run on the Engine's thread pool while the GPU runs the shared expert
// (only the activations cross PCIe, through pinned staging areas with
// asynchronous copies); in a chunk where streaming them pays (prefill; the
// cost model of cuda/stream_plan.h on this machine's measured rates) they are
// copied to the GPU for the layer (double-buffered on a second stream) and
// run there instead.
//
// KV (cuda/gpu_kv.h): every session's state stays in its CPU KVState, the
// source of truth (the same object, records and files as the CPU path, so
// save / load / fork / truncate are the CPU's). The GPU keeps a copy of the
// record bytes of the session it evaluates: window rings, HCA rows, CSA
// indexer keys, and CSA compressed rows up to csa_rows_gpu per layer (the
// planner's budget; the rest stay in the host's arena and only the indexer's
// top-k of them cross PCIe per step). A step rounds and encodes its new rows
// on the GPU, attention reads the records where they lie, and the new window
// records are written back to the host state (one asynchronous copy per
// eval). Policy, decided in attention(): the compressors' rolling state stays
// on the host (compressor_update, fed with the GPU's projections: it is fp32
// state of a few tokens that the snapshots must save exactly), and the rows it
// emits are copied up as they appear; the indexer scores and selects on the
// GPU when the session's keys are FP4 records (kv="fp8", the format
// index_scores_fp4 reads) and on the host (indexer_select) otherwise. After
// a load, fork, truncate, a step on the CPU or a switch of session, the copy
// is made anew from the host (KVState::stamp). One session per call (no
// batching), one call at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "cuda/stream_plan.h"
#include "kv/kv_state.h"
#include "model/engine.h"

namespace pyv4 {
namespace cuda {

// Routed experts [first, end) of one layer that live on the GPU.
struct ExpertRange {
  int64_t layer = 0, first = 0, end = 0;
};

class GpuEngine {
 public:
  // Host experts streamed to the GPU in a large chunk are copied in groups of
  // at most half this many bytes (at least one expert; two groups are in
  // flight, one copied while the other computes), so a prefill needs no more
  // device memory than the plan's margin leaves.
  static constexpr size_t kStreamBytes = size_t{256} << 20;

  // Uploads the model's weights (InputError for a weight type the GPU does
  // not multiply, or a bad range; CudaError when the device runs out of
  // memory or fails). cpu must outlive this object.
  // costs: this machine's rates, by which each chunk decides whether the
  // host's experts of a layer are computed on the CPU or streamed to the GPU
  // (stream_pays, cuda/stream_plan.h; all 0: never streamed).
  // csa_rows_gpu: CSA compressed rows per layer kept on the GPU (-1: all).
  // device: the CUDA device everything of this engine lives and runs on.
  GpuEngine(Engine& cpu, const std::vector<ExpertRange>& experts_on_gpu, const StreamCosts& costs,
            size_t stream_bytes = kStreamBytes, int64_t csa_rows_gpu = -1, int device = 0);
  ~GpuEngine();
  GpuEngine(const GpuEngine&) = delete;
  GpuEngine& operator=(const GpuEngine&) = delete;

  // Engine::eval on the GPU (its passes of Engine::kMaxPass tokens, the
  // activations the plan keeps device room for): the same checks first
  // (nothing changes on an error; a failure midway, e.g. a CUDA error, puts
  // the session back as it was, by Engine::recover on the CPU), the same
  // logits up to the GPU kernels' rounding.
  std::vector<float> eval(KVState& state, const int64_t* tokens, int64_t n, bool all_logits);
  // Engine::truncate with the re-evaluation on the GPU.
  void truncate(KVState& state, int64_t n);

  // Bytes of weights held in device memory.
  size_t weight_bytes() const;
  // Bytes of KV rows held in device memory (the last session's copy).
  size_t kv_bytes() const;
  // Routed experts of layer il on the GPU.
  int64_t experts_on_gpu(int64_t il) const;

 private:
  struct Impl;
  int device_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cuda
}  // namespace pyv4
