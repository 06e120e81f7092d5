#include "model/ops.h"

#include <algorithm>

namespace pyv4 {

void rms_norm(const float* x, const float* w, float* y, int64_t n, float eps) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float r = 1.0f / std::sqrt(static_cast<float>(ss / n) + eps);
  if (w) {
    for (int64_t i = 0; i < n; ++i) y[i] = w[i] * (x[i] * r);
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * r;
  }
}

void rms_norm_rows(const float* x, const float* w, float* y, int64_t n, int64_t d, float eps, ThreadPool& pool) {
  pool.parallel_for(n, 16, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) rms_norm(x + t * d, w, y + t * d, d, eps);
  });
}

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

RopeTable RopeTable::make(const ModelConfig& c, bool compressed_layer) {
  const int64_t dim = c.rope_dim, half = dim / 2;
  const double base = compressed_layer ? c.compress_rope_theta : c.rope_theta;
  RopeTable t;
  t.inv_freq.resize(half);
  // f_k = base^(-2k/dim), computed in fp32 like the reference implementations.
  std::vector<float> pf(half), f(half);  // base^(2k/dim) and its inverse
  for (int64_t k = 0; k < half; ++k) {
    const float e = static_cast<float>(2 * k) / static_cast<float>(dim);
    pf[k] = std::pow(static_cast<float>(base), e);
    f[k] = 1.0f / pf[k];
  }
  if (!compressed_layer || c.yarn_factor <= 1.0) {
    t.inv_freq = f;
    return t;
  }
  // YaRN (spec §2): pairs below `low` keep f_k, pairs above `high` use f_k/factor,
  // linear blend in between. No mscale: cos/sin keep magnitude 1.
  const double pi = 3.14159265358979323846;
  auto corr = [&](double rot) {
    return dim * std::log(static_cast<double>(c.yarn_orig_ctx) / (rot * 2 * pi)) / (2 * std::log(base));
  };
  const double low = std::max(std::floor(corr(c.yarn_beta_fast)), 0.0);
  double high = std::min(std::ceil(corr(c.yarn_beta_slow)), static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  const float factor = static_cast<float>(c.yarn_factor);
  for (int64_t k = 0; k < half; ++k) {
    const float ramp = std::clamp(static_cast<float>((k - low) / (high - low)), 0.0f, 1.0f);
    const float extrapolation = 1.0f - ramp;  // weight of the unscaled frequency
    const float interp = 1.0f / (factor * pf[k]);
    t.inv_freq[k] = interp * (1.0f - extrapolation) + f[k] * extrapolation;
  }
  return t;
}

void RopeTable::apply(float* v, int64_t width, int64_t pos, bool inverse) const {
  const int64_t half = static_cast<int64_t>(inv_freq.size());
  float* r = v + width - 2 * half;
  const float p = static_cast<float>(pos);
  for (int64_t k = 0; k < half; ++k) {
    const float ang = p * inv_freq[k];
    const float c = std::cos(ang), s = inverse ? -std::sin(ang) : std::sin(ang);
    const float a = r[2 * k], b = r[2 * k + 1];
    r[2 * k] = a * c - b * s;
    r[2 * k + 1] = b * c + a * s;
  }
}

}  // namespace pyv4
