// Small AVX2 helpers shared by the AVX2 kernel files (include only from *_avx2.cpp:
// anonymous namespace, so each file keeps its own copy; see tile_drive.h).
#pragma once

#include <immintrin.h>

namespace pyv4 {
namespace qk {
namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

}  // namespace
}  // namespace qk
}  // namespace pyv4
