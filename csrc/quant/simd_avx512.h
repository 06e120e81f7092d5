// Small AVX-512 helpers shared by the AVX-512 kernel files (include only from
// *_avx512.cpp: anonymous namespace, so each file keeps its own copy).
#pragma once

#include <immintrin.h>

namespace pyv4 {
namespace qk {
namespace {

// [a x4, b x4, c x4, d x4] from the four floats of v.
inline __m512 spread4(__m128 v) {
  const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v));
}

}  // namespace
}  // namespace qk
}  // namespace pyv4
