#include "model/engine.h"

#include <chrono>

#include "common/error.h"
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
  const ModelConfig& c = cfg_;
  if (n <= 0) throw InputError("eval: no tokens given");
  for (int64_t t = 0; t < n; ++t) {
    if (tokens[t] < 0 || tokens[t] >= c.n_vocab) {
      throw InputError("token id " + std::to_string(tokens[t]) + " at index " + std::to_string(t) +
                       " is outside the vocabulary [0, " + std::to_string(c.n_vocab) + ")");
    }
  }
  const int64_t pos0 = state.n_tokens();
  if (pos0 + n > c.n_ctx) {
    throw ContextOverflowError("context overflow: the session holds " + std::to_string(pos0) +
                               " tokens, adding " + std::to_string(n) + " would exceed the context length " +
                               std::to_string(c.n_ctx));
  }

  ProfActivate prof_on(prof_.get());
  const auto t_start = std::chrono::steady_clock::now();
  state.begin_eval();
  const int64_t D = c.n_embd, hc = c.hc_mult, W = hc * D;
  // Residual streams: every stream starts as the token's embedding (spec §3.1).
  std::vector<float> X(n * W), y(n * D), f(n * D);
  {
  PROF_SCOPE("embed");
  for (int64_t t = 0; t < n; ++t) {
    dequantize_row(w_.tok_embd.type, w_.tok_embd.row(tokens[t]), &y[t * D], D);
    for (int64_t i = 0; i < hc; ++i) std::copy(&y[t * D], &y[(t + 1) * D], &X[t * W + i * D]);
  }
  }

  HyperMix mix;
  const float eps = static_cast<float>(c.rms_eps);
  for (int64_t il = 0; il < c.n_layer; ++il) {
    const LayerWeights& L = w_.layers[il];
    {
      PROF_SCOPE("mhc");
      hc_pre(c, L.hc_attn, X.data(), n, y.data(), mix, pool_);
      for (int64_t t = 0; t < n; ++t) rms_norm(&y[t * D], L.attn_norm.data(), &y[t * D], D, eps);
    }
    attention_forward(c, L, il, rope_[il], y.data(), n, pos0, state, f.data(), pool_);
    {
      PROF_SCOPE("mhc");
      hc_post(c, mix, f.data(), X.data(), n, pool_);
      hc_pre(c, L.hc_ffn, X.data(), n, y.data(), mix, pool_);
      for (int64_t t = 0; t < n; ++t) rms_norm(&y[t * D], L.ffn_norm.data(), &y[t * D], D, eps);
    }
    moe_forward(c, L, il, y.data(), tokens, n, f.data(), pool_);
    {
      PROF_SCOPE("mhc");
      hc_post(c, mix, f.data(), X.data(), n, pool_);
    }
  }
  state.end_eval(tokens, n);

  // Head: only the rows the caller asked for.
  const int64_t first = all_logits ? 0 : n - 1, n_out = n - first;
  {
    PROF_SCOPE("mhc");
    hc_head(c, w_, X.data() + first * W, n_out, y.data(), pool_);
    for (int64_t t = 0; t < n_out; ++t) rms_norm(&y[t * D], w_.output_norm.data(), &y[t * D], D, eps);
  }
  std::vector<float> logits(n_out * c.n_vocab);
  {
    PROF_SCOPE("matmul.head");
    matmul(w_.output, y.data(), D, n_out, logits.data(), c.n_vocab, pool_);
  }
  if (prof_) prof_->add_eval(std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count());
  return logits;
}

void Engine::truncate(KVState& state, int64_t n) {
  if (n < 0 || n > state.n_tokens()) {
    throw InputError("truncate: n_tokens must be in [0, " + std::to_string(state.n_tokens()) + "], got " +
                     std::to_string(n));
  }
  if (n == state.n_tokens()) return;
  const std::vector<int64_t> ids(state.tokens().begin(), state.tokens().begin() + n);
  const int64_t s = state.restore_before(n);
  if (n > s) eval(state, ids.data() + s, n - s, /*all_logits=*/false);
}

}  // namespace pyv4
