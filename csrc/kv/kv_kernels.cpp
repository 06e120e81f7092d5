#include "kv/kv_kernels.h"

#include <algorithm>
#include <cmath>

#include "kv/qat.h"
#include "quant/cpu_features.h"

namespace pyv4 {

namespace {
float dot_ref(const float* a, const float* b, int64_t n) {
  float s = 0.0f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}
void axpy_ref(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}
void index_scores_ref(const float* qT, const float* w, int64_t nih, int64_t dim,
                      const float* const* keys, int64_t n, float* out) {
  for (int64_t r = 0; r < n; ++r) {
    float s = 0.0f;
    for (int64_t h = 0; h < nih; ++h) {
      // In double: exact for FP4 queries and keys (their products are exact
      // and the sums stay far below 2^53 ulps), which is what the integer
      // kernel of kv_kernels_avx512.cpp computes; keys that tie exactly (FP4
      // values make that common) then tie in both.
      double d = 0.0;
      for (int64_t i = 0; i < dim; ++i) d += static_cast<double>(qT[i * nih + h]) * keys[r][i];
      s += std::max(static_cast<float>(d), 0.0f) * w[h];
    }
    out[r] = s;
  }
}
// Per head: the logits, their max with the sink, the exponentials summed in
// row order after the sink's, then out = Σ_j (e_j / denom) · row_j in row order.
void attend_ref(const float* q, int64_t nh, int64_t d, const float* const* rows, int64_t nk,
                const float* sinks, float scale, float* p, float* out) {
  for (int64_t h = 0; h < nh; ++h) {
    const float* qh = q + h * d;
    float* s = p + h * nk;
    float mx = sinks[h];
    for (int64_t j = 0; j < nk; ++j) {
      s[j] = dot_ref(qh, rows[j], d) * scale;
      mx = std::max(mx, s[j]);
    }
    float denom = std::exp(sinks[h] - mx);
    for (int64_t j = 0; j < nk; ++j) denom += (s[j] = std::exp(s[j] - mx));
    float* oh = out + h * d;
    std::fill(oh, oh + d, 0.0f);
    for (int64_t j = 0; j < nk; ++j) axpy_ref(s[j] / denom, rows[j], oh, d);
  }
}
void index_round_fp4_ref(float* row, int64_t width, uint8_t* rec, size_t rec_bytes) {
  hadamard(row, width);
  act_quant_fp4(row, width, 32);
  if (rec) encode_fp4_row(row, width, rec, rec_bytes);
}
const KvKernels kRef{index_scores_ref,    attend_ref,         decode_fp4_row, decode_fp8_main_row,
                     index_round_fp4_ref, nullptr,            nullptr};
const KvKernels kAvx2{avx2::index_scores,    avx2::attend, avx2::decode_fp4, avx2::decode_fp8_main,
                      avx2::index_round_fp4, nullptr,      nullptr};
const KvKernels kAvx512{avx2::index_scores,    avx512::attend,    avx2::decode_fp4,         avx2::decode_fp8_main,
                        avx2::index_round_fp4, avx512::fp4_query, avx512::index_scores_fp4};
}  // namespace

const KvKernels& kv_kernels_reference() { return kRef; }

const KvKernels& kv_kernels() {
  if (compute_mode() == ComputeMode::Fast && active_isa() == Isa::AVX512) return kAvx512;
  if (compute_mode() == ComputeMode::Fast && active_isa() != Isa::Scalar && isa_supported(Isa::AVX2)) {
    return kAvx2;
  }
  return kRef;
}

}  // namespace pyv4
