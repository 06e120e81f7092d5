#include "model/engine.h"

#include <algorithm>
#include <chrono>
#include <span>

#include "common/error.h"
#include "common/line_buffer.h"
#include "model/attention.h"
#include "model/mhc.h"
#include "model/moe.h"

namespace pyv4 {

Engine::Engine(const std::string& path, int n_threads, bool resident, bool split)
    : file_(std::make_unique<GGUFFile>(path, resident)),
      cfg_(ModelConfig::from_gguf(*file_)),
      pool_(n_threads),
      w_(ModelWeights::load(*file_, cfg_, split, pool_)) {
  for (int64_t il = 0; il < cfg_.n_layer; ++il) {
    rope_.push_back(RopeTable::make(cfg_, cfg_.kind(il) != AttnKind::Sliding));
  }
  if (Profiler::enabled_by_env()) prof_ = std::make_unique<Profiler>();
}

std::vector<float> Engine::eval(KVState& state, const int64_t* tokens, int64_t n, bool all_logits) {
  return eval_in_passes(state, tokens, n, all_logits, [&](const int64_t* t, int64_t k) {
    const BatchItem item{&state, t, k, all_logits};
    return std::move(eval_batch(&item, 1)[0]);
  });
}

std::vector<float> Engine::eval_in_passes(KVState& state, const int64_t* tokens, int64_t n, bool all_logits,
                                          const Pass& pass) {
  const BatchItem item{&state, tokens, n, all_logits};
  check_batch(&item, 1);  // nothing changes before this passes
  if (n <= kMaxPass) return pass(tokens, n);
  const int64_t n0 = state.n_tokens();
  std::vector<float> out;
  try {
    for (int64_t t0 = 0; t0 < n; t0 += kMaxPass) {
      const int64_t k = std::min(kMaxPass, n - t0);
      std::vector<float> logits = pass(tokens + t0, k);
      if (all_logits || t0 + k == n) out.insert(out.end(), logits.begin(), logits.end());
    }
  } catch (...) {  // the failed pass left the session as before it: undo the passes before
    try {
      truncate(state, n0);
    } catch (...) {  // the first error is the one reported
    }
    throw;
  }
  return out;
}

std::vector<SeqSpan> Engine::check_batch(const BatchItem* items, int64_t n_items) const {
  const ModelConfig& c = cfg_;
  if (n_items <= 0) throw InputError("eval_batch: no sessions given");
  std::vector<SeqSpan> seqs(n_items);
  int64_t n = 0;  // rows of the batch
  for (int64_t s = 0; s < n_items; ++s) {
    const BatchItem& it = items[s];
    const std::string where = n_items > 1 ? "batch item " + std::to_string(s) + ": " : "";
    if (it.n <= 0) throw InputError(where + "eval: no tokens given");
    for (int64_t t = 0; t < it.n; ++t) {
      if (it.tokens[t] < 0 || it.tokens[t] >= c.n_vocab) {
        throw InputError(where + "token id " + std::to_string(it.tokens[t]) + " at index " +
                         std::to_string(t) + " is outside the vocabulary [0, " + std::to_string(c.n_vocab) + ")");
      }
    }
    const int64_t pos0 = it.state->n_tokens();
    if (pos0 + it.n > c.n_ctx) {
      throw ContextOverflowError(where + "context overflow: the session holds " + std::to_string(pos0) +
                                 " tokens, adding " + std::to_string(it.n) +
                                 " would exceed the context length " + std::to_string(c.n_ctx));
    }
    for (int64_t r = 0; r < s; ++r) {
      if (items[r].state == it.state) {
        throw InputError("eval_batch: batch items " + std::to_string(r) + " and " + std::to_string(s) +
                         " are the same session");
      }
    }
    seqs[s] = SeqSpan{it.state, n, it.n, pos0};
    n += it.n;
  }
  return seqs;
}

std::vector<std::vector<float>> Engine::eval_batch(const BatchItem* items, int64_t n_items) {
  const ModelConfig& c = cfg_;
  // Everything is checked before any state changes.
  const std::vector<SeqSpan> seqs = check_batch(items, n_items);
  const int64_t n = seqs.back().row0 + seqs.back().n;  // rows of the batch

  ProfActivate prof_on(prof_.get());
  const auto t_start = std::chrono::steady_clock::now();
  for (const BatchItem& it : std::span(items, n_items)) it.state->begin_eval();
  // An exception from here to end_eval (e.g. a KV backing file that cannot
  // grow) leaves the sessions half-updated: put them back on the way out.
  struct RecoverOnThrow {
    Engine& e;
    const BatchItem* items;
    int64_t n_items;
    bool done = false;
    ~RecoverOnThrow() {
      if (done) return;
      for (int64_t s = 0; s < n_items; ++s) {
        try {
          e.recover(*items[s].state);
        } catch (...) {  // the first error is the one reported
        }
      }
    }
  } recover_on_throw{*this, items, n_items};
  std::vector<int64_t> tokens(n);
  for (int64_t s = 0; s < n_items; ++s) std::copy(items[s].tokens, items[s].tokens + items[s].n, &tokens[seqs[s].row0]);
  const int64_t D = c.n_embd, hc = c.hc_mult, W = hc * D;
  // Residual streams: every stream starts as the token's embedding (spec §3.1).
  // Buffers of the calling thread, grown to the largest batch and kept (as in
  // attention_forward and moe_forward: every element is written before it is
  // read, and fresh vectors faulted their pages in on every eval).
  thread_local LineBuffer<float> X_buf, y_buf, f_buf;
  float* X = X_buf.get(n * W);
  float* y = y_buf.get(n * D);
  float* f = f_buf.get(n * D);
  {
  PROF_SCOPE("embed");
  for (int64_t t = 0; t < n; ++t) {
    dequantize_row(w_.tok_embd.type, w_.tok_embd.row(tokens[t]), &y[t * D], D);
    for (int64_t i = 0; i < hc; ++i) std::copy(&y[t * D], &y[(t + 1) * D], &X[t * W + i * D]);
  }
  }

  // Every op but attention's state part works row by row, so the batch's rows
  // go through them together whatever session they belong to.
  HyperMix mix;
  const float eps = static_cast<float>(c.rms_eps);
  for (int64_t il = 0; il < c.n_layer; ++il) {
    const LayerWeights& L = w_.layers[il];
    {
      PROF_SCOPE("mhc");
      hc_pre(c, L.hc_attn, X, n, y, mix, pool_);
      rms_norm_rows(y, L.attn_norm.data(), y, n, D, eps, pool_);
    }
    attention_forward(c, L, il, rope_[il], y, seqs.data(), n_items, n, f, pool_);
    {
      PROF_SCOPE("mhc");
      hc_post(c, mix, f, X, n, pool_);
      hc_pre(c, L.hc_ffn, X, n, y, mix, pool_);
      rms_norm_rows(y, L.ffn_norm.data(), y, n, D, eps, pool_);
    }
    moe_forward(c, L, il, y, tokens.data(), n, f, pool_);
    {
      PROF_SCOPE("mhc");
      hc_post(c, mix, f, X, n, pool_);
    }
  }
  for (int64_t s = 0; s < n_items; ++s) items[s].state->end_eval(items[s].tokens, items[s].n);
  recover_on_throw.done = true;

  // Head: only the rows the callers asked for, gathered into one block.
  std::vector<int64_t> out_rows;
  for (int64_t s = 0; s < n_items; ++s) {
    for (int64_t t = items[s].all_logits ? 0 : items[s].n - 1; t < items[s].n; ++t) {
      out_rows.push_back(seqs[s].row0 + t);
    }
  }
  const int64_t n_out = static_cast<int64_t>(out_rows.size());
  // One session (every eval call): its logits are the result vector itself, not
  // a copy (a decode token's 0.5 MB, allocated fresh each time).
  std::vector<std::vector<float>> result(n_items);
  std::vector<float> gathered;
  float* logits = nullptr;
  if (n_items == 1) {
    result[0].resize(n_out * c.n_vocab);
    logits = result[0].data();
  } else {
    gathered.resize(n_out * c.n_vocab);
    logits = gathered.data();
  }
  {
    PROF_SCOPE("mhc");
    std::vector<float> Xo(n_out * W);
    for (int64_t r = 0; r < n_out; ++r) std::copy_n(&X[out_rows[r] * W], W, &Xo[r * W]);
    hc_head(c, w_, Xo.data(), n_out, y, pool_);
    rms_norm_rows(y, w_.output_norm.data(), y, n_out, D, eps, pool_);
  }
  {
    PROF_SCOPE("matmul.head");
    matmul(w_.output, y, D, n_out, logits, c.n_vocab, pool_);
  }
  for (int64_t s = 0, r = 0; n_items > 1 && s < n_items; ++s) {
    const int64_t rows = items[s].all_logits ? items[s].n : 1;
    result[s].assign(logits + r * c.n_vocab, logits + (r + rows) * c.n_vocab);
    r += rows;
  }
  if (prof_) prof_->add_eval(std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count());
  return result;
}

void Engine::begin_imatrix() {
  if (imatrix_) throw InputError("begin_imatrix: a collection is already running");
  imatrix_ = std::make_unique<ImatrixCollector>(w_);
  set_matmul_observer(imatrix_.get());
}

std::unique_ptr<ImatrixCollector> Engine::end_imatrix() {
  if (!imatrix_) throw InputError("end_imatrix: no collection is running");
  set_matmul_observer(nullptr);
  return std::move(imatrix_);
}

void Engine::recover(KVState& state) { restore_and_replay(state, state.n_tokens(), {}); }

void Engine::truncate(KVState& state, int64_t n, const Reeval& reeval) {
  if (n < 0 || n > state.n_tokens()) {
    throw InputError("truncate: n_tokens must be in [0, " + std::to_string(state.n_tokens()) + "], got " +
                     std::to_string(n));
  }
  if (n < state.n_tokens()) restore_and_replay(state, n, reeval);
}

void Engine::restore_and_replay(KVState& state, int64_t n, const Reeval& reeval) {
  const std::vector<int64_t> ids(state.tokens().begin(), state.tokens().begin() + n);
  const int64_t s = state.restore_before(n);
  if (n <= s) return;
  if (reeval)
    reeval(state, ids.data() + s, n - s);
  else
    eval(state, ids.data() + s, n - s, /*all_logits=*/false);
}

}  // namespace pyv4
