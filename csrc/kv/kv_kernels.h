// Inner loops of attention over cached rows: dot products and axpy in fp32.
//
// The plain loops in kv_kernels.cpp are the reference; kv_kernels_avx2.cpp has
// AVX2+FMA versions, picked when the CPU has them and the compute mode is
// "fast" (csrc/quant/cpu_features.h). A kernel table is fetched once per call
// of the forward pass, so every row of one eval uses the same kernels and
// results do not depend on how a prompt is split into chunks.
#pragma once

#include <cstdint>

namespace pyv4 {

struct KvKernels {
  float (*dot)(const float* a, const float* b, int64_t n);
  void (*axpy)(float a, const float* x, float* y, int64_t n);  // y += a·x
};

const KvKernels& kv_kernels();          // for the current ISA / compute mode
const KvKernels& kv_kernels_reference();

namespace avx2 {
float dot(const float* a, const float* b, int64_t n);
void axpy(float a, const float* x, float* y, int64_t n);
}  // namespace avx2

}  // namespace pyv4
