#include "model/mhc.h"

#include <algorithm>
#include <cmath>

#include "model/mhc_math.h"

namespace pyv4 {

namespace {

// hc_mult is 4 (mhc_math.h), so the per-element loops below can keep the 4
// streams in registers.
using mhc_math::kHc;

// Elements per step of the elementwise loops. A constant trip count lets the
// compiler vectorize them at -O2 for the x86-64 baseline (no epilogue needed);
// each output keeps the operation order of the plain per-element formula, so
// vector and scalar (tail, kB = 1) steps give bitwise the same results.
constexpr int64_t kB = 16;

// Σ x² over one token's flattened streams, in double: kB partial sums (lane k
// takes the elements ≡ k mod kB), then a fixed pairwise combine. The order
// depends only on W, never on the thread that runs it.
double sum_squares(const float* x, int64_t W) {
  double acc[kB] = {};
  int64_t i = 0;
  for (; i + kB <= W; i += kB)
    for (int64_t k = 0; k < kB; ++k) acc[k] += static_cast<double>(x[i + k]) * x[i + k];
  for (int64_t k = 0; i + k < W; ++k) acc[k] += static_cast<double>(x[i + k]) * x[i + k];
  for (int64_t w = kB / 2; w > 0; w /= 2)
    for (int64_t k = 0; k < w; ++k) acc[k] += acc[k + w];
  return acc[0];
}

// μ = (fn · x̄) · rsqrt(mean(x̄²) + eps) for every token, as one parallel region:
// part p of the pool takes a contiguous block of fn's rows (matmul_serial over
// all tokens) and a contiguous block of tokens' Σ x². fn is only 4..24 rows, so
// matmul's own split (grain 16 rows) would leave one thread idle or with a
// third of the rows; here every thread streams the same share of fn. Each
// output is computed by exactly one thread in a fixed order, so μ does not
// depend on the thread count.
void mixes(const ModelConfig& c, const WeightMatrix& fn, const float* X, int64_t n, float* mu,
           ThreadPool& pool) {
  const int64_t W = kHc * c.n_embd, M = fn.rows;
  const int64_t P = std::min<int64_t>(pool.size(), std::max(M, n));
  thread_local std::vector<float> inv_rms;  // [n]; grows once
  if (static_cast<int64_t>(inv_rms.size()) < n) inv_rms.resize(static_cast<size_t>(n));
  float* r = inv_rms.data();
  const float eps = static_cast<float>(c.rms_eps);
  observe_matmul(fn, X, W, n);  // the pieces below run inside the region
  pool.parallel_for(P, 1, [&](int64_t p0, int64_t p1, int) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t r0 = M * p / P, r1 = M * (p + 1) / P;
      if (r1 > r0) matmul_serial(fn.row_slice(r0, r1 - r0), X, W, n, mu + r0, M);
      for (int64_t t = n * p / P; t < n * (p + 1) / P; ++t) {
        const double ss = sum_squares(X + t * W, W);
        r[t] = 1.0f / std::sqrt(static_cast<float>(ss / W) + eps);
      }
    }
  });
  for (int64_t t = 0; t < n; ++t)
    for (int64_t m = 0; m < M; ++m) mu[t * M + m] *= r[t];
}

// y[d] = Σ_i pre_i X_i[d] for d in [d0, d0 + B).
template <int64_t B>
void collapse_step(const float* X, int64_t D, const float* pre, int64_t d0, float* y) {
  float s[B] = {};
  for (int64_t i = 0; i < kHc; ++i)
    for (int64_t k = 0; k < B; ++k) s[k] += pre[i] * X[i * D + d0 + k];
  for (int64_t k = 0; k < B; ++k) y[d0 + k] = s[k];
}

void collapse(const ModelConfig& c, const float* X, const float* pre, float* y) {
  const int64_t D = c.n_embd;
  int64_t d = 0;
  for (; d + kB <= D; d += kB) collapse_step<kB>(X, D, pre, d, y);
  for (; d < D; ++d) collapse_step<1>(X, D, pre, d, y);
}

// X'_j[d] = post_j f[d] + Σ_i comb_ij X_i[d] for d in [d0, d0 + B), all j. The
// step reads its columns of all streams before writing any, so it works in place.
template <int64_t B>
void post_step(const float* post, const float* C, const float* f, float* x, int64_t D, int64_t d0) {
  float in[kHc][B];
#pragma GCC unroll 4
  for (int64_t i = 0; i < kHc; ++i)
    for (int64_t k = 0; k < B; ++k) in[i][k] = x[i * D + d0 + k];
#pragma GCC unroll 4
  for (int64_t j = 0; j < kHc; ++j) {
    float out[B];
    for (int64_t k = 0; k < B; ++k) out[k] = post[j] * f[d0 + k];
#pragma GCC unroll 4
    for (int64_t i = 0; i < kHc; ++i)
      for (int64_t k = 0; k < B; ++k) out[k] += C[i * kHc + j] * in[i][k];
    for (int64_t k = 0; k < B; ++k) x[j * D + d0 + k] = out[k];
  }
}

}  // namespace

void hc_pre(const ModelConfig& c, const HyperConnWeights& w, const float* X, int64_t n, float* y,
            HyperMix& mix, ThreadPool& pool) {
  const int64_t hc = kHc, M = c.hc_mix(), W = hc * c.n_embd;
  const float eps = static_cast<float>(c.hc_eps);
  thread_local std::vector<float> mu;  // [n, M]; grows once
  if (static_cast<int64_t>(mu.size()) < n * M) mu.resize(static_cast<size_t>(n * M));
  float* mus = mu.data();  // the lambda runs on other threads: not their thread_local
  mixes(c, w.fn, X, n, mus, pool);
  mix.post.resize(static_cast<size_t>(n * hc));
  mix.comb.resize(static_cast<size_t>(n * hc * hc));
  // Per token: the mix weights with the 4x4 Sinkhorn (mhc_math.h) and the
  // collapse; tokens are independent.
  pool.parallel_for(n, 1, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) {
      float pre[kHc];
      mhc_math::token_mix(mus + t * M, w.scale.data(), w.base.data(), eps, c.hc_sinkhorn_iters, pre,
                          mix.post.data() + t * hc, mix.comb.data() + t * hc * hc);
      collapse(c, X + t * W, pre, y + t * c.n_embd);
    }
  });
}

void hc_post(const ModelConfig& c, const HyperMix& mix, const float* f, float* X, int64_t n,
             ThreadPool& pool) {
  const int64_t hc = kHc, D = c.n_embd, W = hc * D;
  // Columns are independent and each keeps its operation order, so threads
  // take column ranges (whole kB steps but the last) of every token.
  pool.parallel_for(D, 16 * kB, [&](int64_t d0, int64_t d1, int) {
    for (int64_t t = 0; t < n; ++t) {
      const float* post = mix.post.data() + t * hc;
      const float* C = mix.comb.data() + t * hc * hc;
      const float* ft = f + t * D;
      float* x = X + t * W;
      int64_t d = d0;
      for (; d + kB <= d1; d += kB) post_step<kB>(post, C, ft, x, D, d);
      for (; d < d1; ++d) post_step<1>(post, C, ft, x, D, d);
    }
  });
}

void hc_head(const ModelConfig& c, const ModelWeights& w, const float* X, int64_t n, float* y,
             ThreadPool& pool) {
  const int64_t hc = kHc, W = hc * c.n_embd;
  thread_local std::vector<float> mu;  // [n, hc]; grows once
  if (static_cast<int64_t>(mu.size()) < n * hc) mu.resize(static_cast<size_t>(n * hc));
  float* mus = mu.data();  // the lambda runs on other threads: not their thread_local
  mixes(c, w.hc_head_fn, X, n, mus, pool);
  pool.parallel_for(n, 1, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) {
      float pre[kHc];
      mhc_math::head_pre(mus + t * hc, w.hc_head_scale[0], w.hc_head_base.data(), static_cast<float>(c.hc_eps),
                         pre);
      collapse(c, X + t * W, pre, y + t * c.n_embd);
    }
  });
}

}  // namespace pyv4
