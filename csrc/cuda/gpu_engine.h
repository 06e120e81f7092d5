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
// (only the activations cross PCIe); in a chunk of 32 tokens or more they are
// copied to the GPU for the layer and run there instead.
//
// KV: this first version keeps every session's state in its CPU KVState (the
// same object, records and files as the CPU path, so save / load / fork /
// truncate are the CPU's). The host does the state part of attention with the
// CPU's own functions: the storage rounding of the new rows, the compressors'
// rolling state and emitted rows (compressor_update), the indexer's scores
// and top-k (indexer_select), window / snapshot writes; the rows a step
// reads (window, HCA, the selected CSA rows) are decoded on the host and
// copied to the GPU for the attention (the offload contract of KVState).
// One session per call (no batching), one call at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

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
  // at most this many bytes (at least one expert), so a prefill needs no more
  // device memory than the plan's margin leaves.
  static constexpr size_t kStreamBytes = size_t{256} << 20;

  // Uploads the model's weights (InputError for a weight type the GPU does
  // not multiply, or a bad range; CudaError when the device runs out of
  // memory or fails). cpu must outlive this object.
  GpuEngine(Engine& cpu, const std::vector<ExpertRange>& experts_on_gpu, size_t stream_bytes = kStreamBytes);
  ~GpuEngine();
  GpuEngine(const GpuEngine&) = delete;
  GpuEngine& operator=(const GpuEngine&) = delete;

  // Engine::eval on the GPU: the same checks first (nothing changes on an
  // error), the same logits up to the GPU kernels' rounding.
  std::vector<float> eval(KVState& state, const int64_t* tokens, int64_t n, bool all_logits);
  // Engine::truncate with the re-evaluation on the GPU.
  void truncate(KVState& state, int64_t n);

  // Bytes of weights held in device memory.
  size_t weight_bytes() const;
  // Routed experts of layer il on the GPU.
  int64_t experts_on_gpu(int64_t il) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cuda
}  // namespace pyv4
