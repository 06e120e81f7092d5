#include "model/mhc.h"

#include <cmath>

#include "model/ops.h"

namespace pyv4 {

namespace {

// μ = (fn · x̄) · rsqrt(mean(x̄²) + eps) for every token: one matmul over the
// flattened streams, then a per-token scale.
void mixes(const ModelConfig& c, const WeightMatrix& fn, const float* X, int64_t n, float* mu,
           ThreadPool& pool) {
  const int64_t W = c.hc_mult * c.n_embd, M = fn.rows;
  matmul(fn, X, W, n, mu, M, pool);
  for (int64_t t = 0; t < n; ++t) {
    const float* x = X + t * W;
    double ss = 0.0;
    for (int64_t i = 0; i < W; ++i) ss += static_cast<double>(x[i]) * x[i];
    const float r = 1.0f / std::sqrt(static_cast<float>(ss / W) + static_cast<float>(c.rms_eps));
    for (int64_t m = 0; m < M; ++m) mu[t * M + m] *= r;
  }
}

void collapse(const ModelConfig& c, const float* X, const float* pre, float* y) {
  const int64_t D = c.n_embd;
  for (int64_t d = 0; d < D; ++d) {
    float s = 0.0f;
    for (int64_t i = 0; i < c.hc_mult; ++i) s += pre[i] * X[i * D + d];
    y[d] = s;
  }
}

}  // namespace

void hc_pre(const ModelConfig& c, const HyperConnWeights& w, const float* X, int64_t n, float* y,
            HyperMix& mix, ThreadPool& pool) {
  const int64_t hc = c.hc_mult, M = c.hc_mix(), W = hc * c.n_embd;
  const float eps = static_cast<float>(c.hc_eps);
  std::vector<float> mu(static_cast<size_t>(n * M));
  mixes(c, w.fn, X, n, mu.data(), pool);
  mix.post.resize(static_cast<size_t>(n * hc));
  mix.comb.resize(static_cast<size_t>(n * hc * hc));
  std::vector<float> pre(hc);
  for (int64_t t = 0; t < n; ++t) {
    const float* m = mu.data() + t * M;
    float* post = mix.post.data() + t * hc;
    float* C = mix.comb.data() + t * hc * hc;
    for (int64_t i = 0; i < hc; ++i) {
      pre[i] = sigmoidf(m[i] * w.scale[0] + w.base[i]) + eps;
      post[i] = 2.0f * sigmoidf(m[hc + i] * w.scale[1] + w.base[hc + i]);
    }
    // comb: row-wise softmax + eps, then Sinkhorn (column first), spec §3.3.
    for (int64_t i = 0; i < hc; ++i) {
      float* row = C + i * hc;
      float mx = -INFINITY;
      for (int64_t j = 0; j < hc; ++j) {
        row[j] = m[2 * hc + i * hc + j] * w.scale[2] + w.base[2 * hc + i * hc + j];
        mx = std::max(mx, row[j]);
      }
      float s = 0.0f;
      for (int64_t j = 0; j < hc; ++j) s += (row[j] = std::exp(row[j] - mx));
      for (int64_t j = 0; j < hc; ++j) row[j] = row[j] / s + eps;
    }
    auto norm_cols = [&] {
      for (int64_t j = 0; j < hc; ++j) {
        float s = 0.0f;
        for (int64_t i = 0; i < hc; ++i) s += C[i * hc + j];
        for (int64_t i = 0; i < hc; ++i) C[i * hc + j] /= (s + eps);
      }
    };
    auto norm_rows = [&] {
      for (int64_t i = 0; i < hc; ++i) {
        float s = 0.0f;
        for (int64_t j = 0; j < hc; ++j) s += C[i * hc + j];
        for (int64_t j = 0; j < hc; ++j) C[i * hc + j] /= (s + eps);
      }
    };
    norm_cols();
    for (int64_t it = 1; it < c.hc_sinkhorn_iters; ++it) {
      norm_rows();
      norm_cols();
    }
    collapse(c, X + t * W, pre.data(), y + t * c.n_embd);
  }
}

void hc_post(const ModelConfig& c, const HyperMix& mix, const float* f, float* X, int64_t n) {
  const int64_t hc = c.hc_mult, D = c.n_embd, W = hc * D;
  std::vector<float> out(static_cast<size_t>(W));
  for (int64_t t = 0; t < n; ++t) {
    float* x = X + t * W;
    const float* post = mix.post.data() + t * hc;
    const float* C = mix.comb.data() + t * hc * hc;
    const float* ft = f + t * D;
    for (int64_t j = 0; j < hc; ++j) {
      for (int64_t d = 0; d < D; ++d) {
        float s = post[j] * ft[d];
        for (int64_t i = 0; i < hc; ++i) s += C[i * hc + j] * x[i * D + d];
        out[j * D + d] = s;
      }
    }
    std::copy(out.begin(), out.end(), x);
  }
}

void hc_head(const ModelConfig& c, const ModelWeights& w, const float* X, int64_t n, float* y,
             ThreadPool& pool) {
  const int64_t hc = c.hc_mult, W = hc * c.n_embd;
  std::vector<float> mu(static_cast<size_t>(n * hc)), pre(hc);
  mixes(c, w.hc_head_fn, X, n, mu.data(), pool);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t i = 0; i < hc; ++i) {
      pre[i] = sigmoidf(mu[t * hc + i] * w.hc_head_scale[0] + w.hc_head_base[i]) +
               static_cast<float>(c.hc_eps);
    }
    collapse(c, X + t * W, pre.data(), y + t * c.n_embd);
  }
}

}  // namespace pyv4
