#include "model/attention.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "model/compressor.h"

namespace pyv4 {

void select_topk(const float* scores, int64_t n_visible, int64_t topk, int64_t* out_idx,
                 int64_t* out_n) {
  const int64_t k = std::min(topk, n_visible);
  std::vector<int64_t> idx(n_visible);
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int64_t a, int64_t b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
  });
  std::sort(idx.begin(), idx.begin() + k);
  std::copy(idx.begin(), idx.begin() + k, out_idx);
  *out_n = k;
}

namespace {

// Indexer scores of query t against blocks [0, nb): Σ_h w_h · ReLU(q_h · K_b).
// The positive global scales are folded into w_h (spec §3.6).
void indexer_scores(const ModelConfig& c, const float* qI, const float* wI,
                    const CompressorState& keys, int64_t nb, float* scores) {
  const int64_t nih = c.index_n_head, ihd = c.index_head_dim;
  for (int64_t b = 0; b < nb; ++b) {
    const float* k = keys.row(b);
    float s = 0.0f;
    for (int64_t h = 0; h < nih; ++h) {
      const float* q = qI + h * ihd;
      float dot = 0.0f;
      for (int64_t i = 0; i < ihd; ++i) dot += q[i] * k[i];
      s += std::max(dot, 0.0f) * wI[h];
    }
    scores[b] = s;
  }
}

}  // namespace

void attention_forward(const ModelConfig& c, const LayerWeights& w, int64_t il,
                       const RopeTable& rope, const float* x, int64_t n, int64_t pos0,
                       KVState& kv, float* out, ThreadPool& pool) {
  const int64_t D = c.n_embd, H = c.n_head, d = c.head_dim, QL = c.q_lora_rank;
  const float eps = static_cast<float>(c.rms_eps);
  LayerState& st = kv.layer(il);

  // Q path: q_lat = q_norm(wq_a x); q = wq_b q_lat; per-head RMS; RoPE at P.
  std::vector<float> qlat(n * QL), q(n * H * d), kvr(n * d);
  matmul(w.wq_a, x, D, n, qlat.data(), QL, pool);
  for (int64_t t = 0; t < n; ++t) rms_norm(&qlat[t * QL], w.q_norm.data(), &qlat[t * QL], QL, eps);
  matmul(w.wq_b, qlat.data(), QL, n, q.data(), H * d, pool);
  // KV path: one shared K = V head.
  matmul(w.wkv, x, D, n, kvr.data(), d, pool);
  pool.parallel_for(n, 1, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) {
      for (int64_t h = 0; h < H; ++h) {
        float* qh = &q[(t * H + h) * d];
        rms_norm(qh, nullptr, qh, d, eps);
        rope.apply(qh, d, pos0 + t);
      }
      float* k = &kvr[t * d];
      rms_norm(k, w.kv_norm.data(), k, d, eps);
      rope.apply(k, d, pos0 + t);
    }
  });

  // Compressors run before attention: a block closed by a token of this chunk
  // is visible to that token (spec §3.5 visibility).
  int64_t ratio = 0;
  std::vector<std::vector<int64_t>> picked;  // CSA: selected blocks per query
  if (w.kind != AttnKind::Sliding) {
    ratio = w.comp.ratio;
    compressor_update(c, w.comp, rope, x, n, pos0, st.comp, pool);
  }
  if (w.kind == AttnKind::CSA) {
    compressor_update(c, w.index_comp, rope, x, n, pos0, st.index_comp, pool);
    const int64_t nih = c.index_n_head, ihd = c.index_head_dim;
    std::vector<float> qI(n * nih * ihd), wI(n * nih);
    matmul(w.index_q_b, qlat.data(), QL, n, qI.data(), nih * ihd, pool);
    matmul(w.index_proj, x, D, n, wI.data(), nih, pool);
    const float wscale = 1.0f / std::sqrt(static_cast<float>(nih));
    const float qscale = 1.0f / std::sqrt(static_cast<float>(ihd));
    picked.resize(n);
    pool.parallel_for(n, 1, [&](int64_t t0, int64_t t1, int) {
      std::vector<float> scores;
      for (int64_t t = t0; t < t1; ++t) {
        for (int64_t h = 0; h < nih; ++h) rope.apply(&qI[(t * nih + h) * ihd], ihd, pos0 + t);
        for (int64_t h = 0; h < nih; ++h) wI[t * nih + h] *= wscale * qscale;
        const int64_t nb = (pos0 + t + 1) / ratio;
        scores.resize(nb);
        indexer_scores(c, &qI[t * nih * ihd], &wI[t * nih], st.index_comp, nb, scores.data());
        picked[t].resize(std::min(nb, c.index_topk));
        int64_t k = 0;
        select_topk(scores.data(), nb, c.index_topk, picked[t].data(), &k);
      }
    });
  }

  // Softmax over window ∪ visible compressed rows, with the per-head sink.
  std::vector<float> o(n * H * d);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  pool.parallel_for(n * H, 1, [&](int64_t i0, int64_t i1, int) {
    std::vector<const float*> keys;
    std::vector<float> s;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t t = i / H, h = i % H, P = pos0 + t;
      keys.clear();
      for (int64_t j = std::max<int64_t>(0, P - c.window + 1); j <= P; ++j) {
        keys.push_back(j >= pos0 ? &kvr[(j - pos0) * d] : kv.window_row(il, j));
      }
      if (w.kind == AttnKind::HCA) {
        const int64_t nb = (P + 1) / ratio;
        for (int64_t b = 0; b < nb; ++b) keys.push_back(st.comp.row(b));
      } else if (w.kind == AttnKind::CSA) {
        for (int64_t b : picked[t]) keys.push_back(st.comp.row(b));
      }
      const float* qh = &q[(t * H + h) * d];
      s.resize(keys.size());
      float mx = w.sinks[h];
      for (size_t j = 0; j < keys.size(); ++j) {
        float dot = 0.0f;
        for (int64_t e = 0; e < d; ++e) dot += qh[e] * keys[j][e];
        s[j] = dot * scale;
        mx = std::max(mx, s[j]);
      }
      float denom = std::exp(w.sinks[h] - mx);  // sink: denominator only
      for (size_t j = 0; j < keys.size(); ++j) denom += (s[j] = std::exp(s[j] - mx));
      float* oh = &o[(t * H + h) * d];
      std::fill(oh, oh + d, 0.0f);
      for (size_t j = 0; j < keys.size(); ++j) {
        const float p = s[j] / denom;
        for (int64_t e = 0; e < d; ++e) oh[e] += p * keys[j][e];
      }
      rope.apply(oh, d, P, /*inverse=*/true);  // V carried RoPE (K = V); undo it
    }
  });

  // The chunk's rows enter the window ring only now: earlier queries of this
  // chunk read older ring slots that these would overwrite.
  for (int64_t t = std::max<int64_t>(0, n - c.window); t < n; ++t) {
    std::copy(&kvr[t * d], &kvr[(t + 1) * d], kv.window_row(il, pos0 + t));
  }

  // Grouped low-rank output: z_g = W_oa[g] · concat(heads of group g); out = wo_b z.
  const int64_t G = c.o_groups, OL = c.o_lora_rank, gw = H * d / G;
  std::vector<float> z(n * G * OL);
  for (int64_t g = 0; g < G; ++g) {
    matmul(w.wo_a.row_slice(g * OL, OL), o.data() + g * gw, H * d, n, z.data() + g * OL, G * OL, pool);
  }
  matmul(w.wo_b, z.data(), G * OL, n, out, D, pool);
}

}  // namespace pyv4
