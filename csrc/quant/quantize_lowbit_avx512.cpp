// AVX-512 grid search of the IQ2_XXS quantizer: sixteen grid points per vector
// (contract in quant/quantize_lowbit_kernels.h).
#include <immintrin.h>

#include "quant/quantize_lowbit_kernels.h"

namespace pyv4 {
namespace lowbit {

void grid_dots_avx512(const float* wa, const float* w, const float* g, const float* gg, float* A, float* B) {
  for (int p = 0; p < 256; p += 16) {
    __m512 a = _mm512_mul_ps(_mm512_set1_ps(wa[0]), _mm512_load_ps(g + p));
    __m512 b = _mm512_mul_ps(_mm512_set1_ps(w[0]), _mm512_load_ps(gg + p));
    for (int k = 1; k < 8; ++k) {
      a = _mm512_add_ps(a, _mm512_mul_ps(_mm512_set1_ps(wa[k]), _mm512_load_ps(g + 256 * k + p)));
      b = _mm512_add_ps(b, _mm512_mul_ps(_mm512_set1_ps(w[k]), _mm512_load_ps(gg + 256 * k + p)));
    }
    _mm512_store_ps(A + p, a);
    _mm512_store_ps(B + p, b);
  }
}

int grid_pick_avx512(const float* A, const float* B, float h) {
  alignas(64) float v[256];
  const __m512 hv = _mm512_set1_ps(h);
  __m512 mx = _mm512_set1_ps(-__builtin_inff());
  __mmask16 nan = 0;
  for (int p = 0; p < 256; p += 16) {
    const __m512 x = _mm512_sub_ps(_mm512_load_ps(A + p), _mm512_mul_ps(_mm512_load_ps(B + p), hv));
    _mm512_store_ps(v + p, x);
    mx = _mm512_max_ps(mx, x);
    nan |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  }
  if (nan) {
    for (int p = 0; p < 256; ++p)
      if (v[p] != v[p]) return p;
  }
  const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
  for (int p = 0; p < 256; p += 16) {
    const __mmask16 eq = _mm512_cmp_ps_mask(_mm512_load_ps(v + p), m, _CMP_EQ_OQ);
    if (eq) return p + __builtin_ctz(static_cast<unsigned>(eq));
  }
  return 0;  // unreachable: some value equals the maximum
}

}  // namespace lowbit
}  // namespace pyv4
