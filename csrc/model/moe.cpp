#include "model/moe.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "common/line_buffer.h"
#include "common/profiler.h"
#include "model/ops.h"

namespace pyv4 {

void moe_route(const ModelConfig& c, const LayerWeights& w, float* logits, const int64_t* tokens, int64_t n,
               int64_t* sel, float* wt) {
  const int64_t E = c.n_expert, K = c.n_expert_used;
  std::vector<int64_t> order(E);
  std::vector<float> biased(E);
  for (int64_t t = 0; t < n; ++t) {
    float* s = &logits[t * E];
    for (int64_t e = 0; e < E; ++e) s[e] = std::sqrt(softplusf(s[e]));
    int64_t* idx = sel + t * K;
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
}

namespace {

struct MoeBuffers {
  LineBuffer<float> xe, ge, ue, ye, gs, us, ys;
};

}  // namespace

void moe_forward(const ModelConfig& c, const LayerWeights& w, int64_t il, const float* x,
                 const int64_t* tokens, int64_t n, float* out, ThreadPool& pool) {
  const int64_t D = c.n_embd, E = c.n_expert, K = c.n_expert_used, F = c.n_ff_exp;
  std::vector<float> logits(n * E);
  ProfScope prof_route("moe.router");
  matmul(w.router, x, D, n, logits.data(), E, pool);

  std::vector<int64_t> sel(n * K);
  std::vector<float> wt(n * K);
  moe_route(c, w, logits.data(), tokens, n, sel.data(), wt.data());

  // Group tokens by expert, one batched FFN per active expert.
  std::vector<std::vector<std::pair<int64_t, float>>> by_expert(E);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t k = 0; k < K; ++k) by_expert[sel[t * K + k]].push_back({t, wt[t * K + k]});

  prof_route.stop();
  ProfScope prof_exp("matmul.experts");
  // Every FFN of the layer (the active routed experts and the shared one) runs
  // as two matmul_many batches: all gate and up products, then all downs. A
  // decode step would otherwise pay 21 fork/joins for 21 small GEMVs; and the
  // experts reading the same X (decode: every one) share its quantization.
  std::vector<int64_t> active, first(E + 1, 0);  // first[e]: expert e's rows in xe/ge/ue/ye
  for (int64_t e = 0; e < E; ++e) {
    first[e + 1] = first[e] + static_cast<int64_t>(by_expert[e].size());
    if (!by_expert[e].empty()) active.push_back(e);
  }
  const int64_t rows = first[E];  // n * K
  // Decode (and any chunk where every active expert got every token, in order):
  // the experts read x in place.
  bool all_tokens = true;
  for (int64_t e : active) {
    const auto& list = by_expert[e];
    all_tokens = all_tokens && static_cast<int64_t>(list.size()) == n;
    for (int64_t r = 0; all_tokens && r < n; ++r) all_tokens = list[r].first == r;
  }
  // The FFNs' activations (~165 MB per layer for a 512-token V4-Flash chunk):
  // buffers of the calling thread, grown to the largest chunk and kept, as every
  // element is written before it is read. Fresh vectors per layer would zero them
  // and, above glibc's mmap threshold, fault their pages in again every layer.
  thread_local MoeBuffers buf;
  const int64_t Fs = w.has_shared ? w.gate_sh.rows : 0;
  float* xe = buf.xe.get(all_tokens ? 0 : rows * D);
  float* ge = buf.ge.get(rows * F);
  float* ue = buf.ue.get(rows * F);
  float* ye = buf.ye.get(rows * D);
  float* gs = buf.gs.get(n * Fs);
  float* us = buf.us.get(n * Fs);
  float* ys = buf.ys.get(w.has_shared ? n * D : 0);
  std::vector<WeightMatrix> mats;
  mats.reserve(3 * active.size());
  for (int64_t e : active) {
    mats.push_back(w.gate_exps.row_slice(e * F, F));
    mats.push_back(w.up_exps.row_slice(e * F, F));
    mats.push_back(w.down_exps.row_slice(e * D, D));
  }
  std::vector<MatmulTask> tasks;
  tasks.reserve(2 * active.size() + 2);
  for (size_t a = 0; a < active.size(); ++a) {
    const int64_t e = active[a], r0 = first[e], ne = first[e + 1] - r0;
    const float* X = x;
    if (!all_tokens) {
      for (int64_t r = 0; r < ne; ++r) {
        const int64_t t = by_expert[e][r].first;
        std::copy(x + t * D, x + (t + 1) * D, &xe[(r0 + r) * D]);
      }
      X = &xe[r0 * D];
    }
    tasks.push_back({&mats[3 * a], X, D, ne, &ge[r0 * F], F});
    tasks.push_back({&mats[3 * a + 1], X, D, ne, &ue[r0 * F], F});
  }
  if (w.has_shared) {
    tasks.push_back({&w.gate_sh, x, D, n, gs, Fs});
    tasks.push_back({&w.up_sh, x, D, n, us, Fs});
  }
  matmul_many(tasks.data(), static_cast<int64_t>(tasks.size()), pool);
  const float limit = static_cast<float>(c.swiglu_limit[il]);
  const float limit_sh = w.has_shared ? static_cast<float>(c.swiglu_limit_shared[il]) : 0.0f;
  pool.parallel_for(rows * F + n * Fs, 1024, [&](int64_t i0, int64_t i1, int) {
    const int64_t split = rows * F;  // routed elements, then the shared expert's
    if (i0 < split) swiglu(&ge[i0], &ue[i0], &ge[i0], std::min(i1, split) - i0, limit);
    if (i1 > split) {
      const int64_t j0 = std::max(i0, split) - split;
      swiglu(&gs[j0], &us[j0], &gs[j0], i1 - split - j0, limit_sh);
    }
  });
  tasks.clear();
  for (size_t a = 0; a < active.size(); ++a) {
    const int64_t e = active[a], r0 = first[e], ne = first[e + 1] - r0;
    tasks.push_back({&mats[3 * a + 2], &ge[r0 * F], F, ne, &ye[r0 * D], D});
  }
  if (w.has_shared) tasks.push_back({&w.down_sh, gs, Fs, n, ys, D});
  matmul_many(tasks.data(), static_cast<int64_t>(tasks.size()), pool);

  // out = Σ_k g_k · expert_k(x) in expert order, then + shared(x); per token,
  // its rows of ye in ascending expert order (the same sums as one pass over
  // the experts), tokens spread over the pool.
  // Token t's K contributions sit at [t * K, t * K + K) of row_of / g_of.
  std::vector<int64_t> row_of(n * K), filled(n, 0);
  std::vector<float> g_of(n * K);
  for (int64_t e : active)
    for (int64_t r = 0; r < first[e + 1] - first[e]; ++r) {
      const int64_t t = by_expert[e][r].first, slot = t * K + filled[t]++;
      row_of[slot] = first[e] + r;
      g_of[slot] = by_expert[e][r].second;
    }
  pool.parallel_for(n, 16, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) {
      float* o = out + t * D;
      std::fill(o, o + D, 0.0f);
      for (int64_t k = 0; k < K; ++k) {
        const float* y = &ye[row_of[t * K + k] * D];
        const float g = g_of[t * K + k];
        for (int64_t i = 0; i < D; ++i) o[i] += g * y[i];
      }
      if (w.has_shared)
        for (int64_t i = 0; i < D; ++i) o[i] += ys[t * D + i];
    }
  });
}

}  // namespace pyv4
