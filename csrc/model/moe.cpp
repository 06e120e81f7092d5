#include "model/moe.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "common/profiler.h"
#include "model/ops.h"

namespace pyv4 {

namespace {

// SwiGLU with the V4 clamp: gate clamped above only, up clamped to ±limit
// (limit 0 = no clamp, as in the official code).
void swiglu(const float* g, const float* u, float* h, int64_t n, float limit) {
  for (int64_t i = 0; i < n; ++i) {
    float gi = g[i], ui = u[i];
    if (limit > 0.0f) {
      gi = std::min(gi, limit);
      ui = std::clamp(ui, -limit, limit);
    }
    h[i] = siluf(gi) * ui;
  }
}

// out [n, D] = down · swiglu(gate · X, up · X) for one expert's weights.
void expert_ffn(const WeightMatrix& gate, const WeightMatrix& up, const WeightMatrix& down,
                const float* X, int64_t n, int64_t D, float limit, float* out, ThreadPool& pool) {
  const int64_t F = gate.rows;
  std::vector<float> g(n * F), u(n * F);
  matmul(gate, X, D, n, g.data(), F, pool);
  matmul(up, X, D, n, u.data(), F, pool);
  swiglu(g.data(), u.data(), g.data(), n * F, limit);
  matmul(down, g.data(), F, n, out, D, pool);
}

}  // namespace

void moe_forward(const ModelConfig& c, const LayerWeights& w, int64_t il, const float* x,
                 const int64_t* tokens, int64_t n, float* out, ThreadPool& pool) {
  const int64_t D = c.n_embd, E = c.n_expert, K = c.n_expert_used, F = c.n_ff_exp;
  std::vector<float> logits(n * E);
  ProfScope prof_route("moe.router");
  matmul(w.router, x, D, n, logits.data(), E, pool);

  // Routing: expert ids and weights per token.
  std::vector<int64_t> sel(n * K);
  std::vector<float> wt(n * K);
  std::vector<int64_t> order(E);
  std::vector<float> biased(E);
  for (int64_t t = 0; t < n; ++t) {
    float* s = &logits[t * E];
    for (int64_t e = 0; e < E; ++e) s[e] = std::sqrt(softplusf(s[e]));
    int64_t* idx = &sel[t * K];
    if (w.tid2eid) {
      for (int64_t k = 0; k < K; ++k) idx[k] = w.tid2eid[tokens[t] * K + k];
    } else {
      // The bias steers selection only; weights use the raw scores.
      for (int64_t e = 0; e < E; ++e) biased[e] = s[e] + w.router_bias[e];
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + K, order.end(), [&](int64_t a, int64_t b) {
        return biased[a] > biased[b] || (biased[a] == biased[b] && a < b);
      });
      std::copy(order.begin(), order.begin() + K, idx);
    }
    float sum = 0.0f;
    for (int64_t k = 0; k < K; ++k) sum += s[idx[k]];
    const float denom = c.norm_topk ? sum + 1e-20f : 1.0f;
    for (int64_t k = 0; k < K; ++k) {
      wt[t * K + k] = s[idx[k]] / denom * static_cast<float>(c.routed_scale);
    }
  }

  // Group tokens by expert, one batched FFN per active expert.
  std::vector<std::vector<std::pair<int64_t, float>>> by_expert(E);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t k = 0; k < K; ++k) by_expert[sel[t * K + k]].push_back({t, wt[t * K + k]});

  prof_route.stop();
  ProfScope prof_exp("matmul.experts");
  std::fill(out, out + n * D, 0.0f);
  const float limit = static_cast<float>(c.swiglu_limit[il]);
  std::vector<float> xe, ye;
  for (int64_t e = 0; e < E; ++e) {
    const auto& list = by_expert[e];
    if (list.empty()) continue;
    const int64_t ne = static_cast<int64_t>(list.size());
    xe.resize(ne * D);
    ye.resize(ne * D);
    for (int64_t r = 0; r < ne; ++r) std::copy(x + list[r].first * D, x + (list[r].first + 1) * D, &xe[r * D]);
    expert_ffn(w.gate_exps.row_slice(e * F, F), w.up_exps.row_slice(e * F, F),
               w.down_exps.row_slice(e * D, D), xe.data(), ne, D, limit, ye.data(), pool);
    for (int64_t r = 0; r < ne; ++r) {
      float* o = out + list[r].first * D;
      const float g = list[r].second;
      for (int64_t i = 0; i < D; ++i) o[i] += g * ye[r * D + i];
    }
  }

  prof_exp.stop();
  if (w.has_shared) {
    PROF_SCOPE("matmul.shared");
    std::vector<float> sh(n * D);
    expert_ffn(w.gate_sh, w.up_sh, w.down_sh, x, n, D,
               static_cast<float>(c.swiglu_limit_shared[il]), sh.data(), pool);
    for (int64_t i = 0; i < n * D; ++i) out[i] += sh[i];
  }
}

}  // namespace pyv4
