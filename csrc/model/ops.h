// Small fp32 building blocks of the forward pass (spec §2): norms, RoPE,
// activations. Plain loops; the heavy lifting is in csrc/quant.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "common/thread_pool.h"
#include "model/config.h"

namespace pyv4 {

// y = w ⊙ x · rsqrt(mean(x²) + eps); w == nullptr for the unweighted form. In place ok.
void rms_norm(const float* x, const float* w, float* y, int64_t n, float eps);
// rms_norm of each of n rows of width d (row t at x + t * d, y + t * d), rows
// spread over the pool (a 512-token chunk's norms ran on one thread: ~5 ms each).
void rms_norm_rows(const float* x, const float* w, float* y, int64_t n, int64_t d, float eps, ThreadPool& pool);

// Interleaved-pair RoPE on the last 2*inv_freq.size() dims of a vector.
struct RopeTable {
  std::vector<float> inv_freq;  // one frequency per rotated pair

  // Plain RoPE (sliding layers) or YaRN-blended (compressed layers), spec §2.
  static RopeTable make(const ModelConfig& c, bool compressed_layer);
  // Rotates v[width - 2P : width] by +pos (inverse = false) or -pos.
  void apply(float* v, int64_t width, int64_t pos, bool inverse = false) const;
};

// SwiGLU of the experts with the V4 clamp (spec §3.7): gate clamped above only,
// up clamped to ±limit (limit 0 = no clamp, as in the official code). h == g ok.
void swiglu(const float* g, const float* u, float* h, int64_t n, float limit);

inline float sigmoidf(float x) { return 1.0f / (1.0f + std::exp(-x)); }
inline float siluf(float x) { return x / (1.0f + std::exp(-x)); }
// torch.nn.functional.softplus with its default threshold of 20.
inline float softplusf(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

}  // namespace pyv4
