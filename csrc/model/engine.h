// The DeepSeek-V4 engine: a loaded GGUF, its validated config and weights, a
// thread pool, and the forward pass over a chunk of tokens for one session.
//
// Path of one token: Engine::eval → embedding → per layer { hc_pre →
// attention_forward (csrc/model/attention.cpp) → hc_post → hc_pre → moe_forward
// (csrc/model/moe.cpp) → hc_post } → hc_head → norm → head; every matrix
// product goes through matmul() in csrc/quant.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/profiler.h"
#include "common/thread_pool.h"
#include "gguf/gguf_file.h"
#include "kv/kv_state.h"
#include "model/attention.h"
#include "model/config.h"
#include "model/imatrix.h"
#include "model/ops.h"
#include "model/weights.h"

namespace pyv4 {

class Engine {
 public:
  // resident: copy the whole file into anonymous memory instead of mapping it
  // (gguf/gguf_file.h). split: copy the Q4_0 / MXFP4 matrices into the split
  // layout when the AVX-512 kernels are active (ModelWeights::load). PYV4_PROFILE=1
  // in the environment turns on the per-op profile (profiler()).
  Engine(const std::string& path, int n_threads, bool resident = false, bool split = true);

  const ModelConfig& config() const { return cfg_; }
  // The weights (views of the file or split copies) and each layer's RoPE
  // table, for the GPU path (csrc/cuda/gpu_engine.*), which uploads them.
  const ModelWeights& weights() const { return w_; }
  const RopeTable& rope(int64_t il) const { return rope_[il]; }
  const GGUFFile& file() const { return *file_; }
  ThreadPool& pool() { return pool_; }
  // Matrices held in the split layout.
  size_t split_matrices() const { return w_.split_copies.size(); }

  // A new session state (csrc/kv): rows stored as `type` in a memory-mapped
  // file (`path`, or an unlinked temporary file when empty).
  std::unique_ptr<KVState> new_state(KVType type = KVType::FP8, const std::string& path = "",
                                     int64_t snap_every = KVState::kDefaultSnapEvery) const {
    return std::make_unique<KVState>(cfg_, type, path, snap_every);
  }

  // Runs tokens [n] through the model after the session's current tokens and
  // returns logits: [n, vocab] if all_logits, else [vocab] for the last token.
  // Validates everything first: on error the session is unchanged. A long
  // eval runs in passes of kMaxPass tokens (the same logits, bit for bit).
  std::vector<float> eval(KVState& state, const int64_t* tokens, int64_t n, bool all_logits);

  // Tokens per forward pass of eval. A pass's activations grow with its tokens
  // (for V4-Flash ~0.3 MB per token in the residual streams and attention, and
  // ~320 KB per token in the routed experts' buffers): a 32K-token prompt in one
  // pass would take ~20 GB beside the weights. 512 tokens already keep every
  // GEMM compute-bound; the GPU plan keeps device room for one pass
  // (placement.py PREFILL_CHUNK).
  static constexpr int64_t kMaxPass = 512;
  // eval's loop, shared with the GPU path: checks the whole call, runs `pass`
  // on each piece of at most kMaxPass tokens (returning its logits as eval
  // would; if it throws, it leaves the session as it was before that piece),
  // and if one throws truncates the session back to where the call started
  // (on this engine) and rethrows.
  using Pass = std::function<std::vector<float>(const int64_t* tokens, int64_t n)>;
  std::vector<float> eval_in_passes(KVState& state, const int64_t* tokens, int64_t n, bool all_logits,
                                    const Pass& pass);

  // One session's part of a batched step.
  struct BatchItem {
    KVState* state;
    const int64_t* tokens;
    int64_t n;
    bool all_logits;
  };
  // Evaluates several sessions in one forward pass: their tokens form the rows
  // of one batch, so every weight matrix is read once per step for all of them
  // (each routed expert once for all rows routed to it), while each session
  // keeps its own KV state and positions. Returns each item's logits as eval
  // would. Validates every item first (ids, context, distinct sessions): on
  // error no session is changed.
  std::vector<std::vector<float>> eval_batch(const BatchItem* items, int64_t n_items);

  // The checks eval_batch makes before anything changes (ids in the
  // vocabulary, context length, distinct sessions; InputError /
  // ContextOverflowError) and each item's span of the batch's rows.
  std::vector<SeqSpan> check_batch(const BatchItem* items, int64_t n_items) const;

  // Cuts the session back to its first n tokens: restores the latest snapshot
  // at or before n and re-evaluates the (< snap_every) tokens after it, with
  // reeval (the GPU path's eval) or, when empty, this engine's eval.
  using Reeval = std::function<void(KVState&, const int64_t*, int64_t)>;
  void truncate(KVState& state, int64_t n, const Reeval& reeval = {});

  // After an eval that threw midway (its KV rows, compressor tails and
  // snapshots partly written, the token count not yet advanced): puts the
  // session back as it was before that eval, by truncate's restore to its
  // n_tokens() (which truncate itself skips as a no-op), re-evaluating here, on
  // the CPU. eval_batch does it for its sessions; the GPU path for its.
  void recover(KVState& state);

  // Importance-matrix collection (model/imatrix.h): from begin_imatrix() on,
  // every eval adds its products' input statistics; end_imatrix() stops and
  // hands them over. One collection at a time in the process.
  void begin_imatrix();
  std::unique_ptr<ImatrixCollector> end_imatrix();

  // Wall time per op kind summed over every eval since the last reset; nullptr
  // when profiling is off.
  Profiler* profiler() { return prof_.get(); }

 private:
  // truncate's and recover's common part (0 <= n <= state.n_tokens()): the
  // latest snapshot at or before n restored, the tokens after it evaluated again
  // with reeval or, when empty, this engine's eval.
  void restore_and_replay(KVState& state, int64_t n, const Reeval& reeval);

  std::unique_ptr<GGUFFile> file_;
  ModelConfig cfg_;
  ThreadPool pool_;  // before w_: the load's split copies run on it
  ModelWeights w_;
  std::vector<RopeTable> rope_;  // per layer: plain (sliding) or YaRN (compressed)
  std::unique_ptr<Profiler> prof_;
  std::unique_ptr<ImatrixCollector> imatrix_;
};

}  // namespace pyv4
