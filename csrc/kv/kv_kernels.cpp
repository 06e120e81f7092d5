#include "kv/kv_kernels.h"

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
const KvKernels kRef{dot_ref, axpy_ref};
const KvKernels kAvx2{avx2::dot, avx2::axpy};
}  // namespace

const KvKernels& kv_kernels_reference() { return kRef; }

const KvKernels& kv_kernels() {
  if (compute_mode() == ComputeMode::Fast && active_isa() != Isa::Scalar && isa_supported(Isa::AVX2)) {
    return kAvx2;
  }
  return kRef;
}

}  // namespace pyv4
