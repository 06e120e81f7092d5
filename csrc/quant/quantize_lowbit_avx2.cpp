// AVX2 grid search of the IQ2_XXS quantizer: eight grid points per vector
// (contract in quant/quantize_lowbit_kernels.h).
#include <immintrin.h>

#include "quant/quantize_lowbit_kernels.h"

namespace pyv4 {
namespace lowbit {

void grid_dots_avx2(const float* wa, const float* w, const float* g, const float* gg, float* A, float* B) {
  for (int p = 0; p < 256; p += 8) {
    __m256 a = _mm256_mul_ps(_mm256_set1_ps(wa[0]), _mm256_load_ps(g + p));
    __m256 b = _mm256_mul_ps(_mm256_set1_ps(w[0]), _mm256_load_ps(gg + p));
    for (int k = 1; k < 8; ++k) {
      a = _mm256_add_ps(a, _mm256_mul_ps(_mm256_set1_ps(wa[k]), _mm256_load_ps(g + 256 * k + p)));
      b = _mm256_add_ps(b, _mm256_mul_ps(_mm256_set1_ps(w[k]), _mm256_load_ps(gg + 256 * k + p)));
    }
    _mm256_store_ps(A + p, a);
    _mm256_store_ps(B + p, b);
  }
}

int grid_pick_avx2(const float* A, const float* B, float h) {
  alignas(32) float v[256];
  const __m256 hv = _mm256_set1_ps(h);
  __m256 mx = _mm256_set1_ps(-__builtin_inff()), nan = _mm256_setzero_ps();
  for (int p = 0; p < 256; p += 8) {
    const __m256 x = _mm256_sub_ps(_mm256_load_ps(A + p), _mm256_mul_ps(_mm256_load_ps(B + p), hv));
    _mm256_store_ps(v + p, x);
    mx = _mm256_max_ps(mx, x);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  }
  if (_mm256_movemask_ps(nan)) {
    for (int p = 0; p < 256; ++p)
      if (v[p] != v[p]) return p;
  }
  mx = _mm256_max_ps(mx, _mm256_permute2f128_ps(mx, mx, 1));
  mx = _mm256_max_ps(mx, _mm256_shuffle_ps(mx, mx, _MM_SHUFFLE(1, 0, 3, 2)));
  mx = _mm256_max_ps(mx, _mm256_shuffle_ps(mx, mx, _MM_SHUFFLE(2, 3, 0, 1)));
  for (int p = 0; p < 256; p += 8) {
    const int m = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_load_ps(v + p), mx, _CMP_EQ_OQ));
    if (m) return p + __builtin_ctz(static_cast<unsigned>(m));
  }
  return 0;  // unreachable: some value equals the maximum
}

}  // namespace lowbit
}  // namespace pyv4
