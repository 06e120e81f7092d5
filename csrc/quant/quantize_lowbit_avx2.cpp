// AVX2 grid search of the IQ2_XXS quantizer: eight grid points per vector
// (contract in quant/quantize_lowbit_kernels.h).
#include <immintrin.h>

#include <cstdint>

#include "quant/quantize_lowbit_kernels.h"
#include "quant/quantize_lowbit_lanes.h"

namespace pyv4 {
namespace lowbit {

void grid_dots_avx2(const float* wa, const float* w, const float* g, const float* gg, float* A, float* B) {
  // four vectors of grid points at a time: eight independent add chains (one
  // chain of 8 dependent adds per vector would wait on the add latency)
  for (int p = 0; p < 256; p += 4 * 8) {
    __m256 a[4], b[4];
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) {
      a[u] = _mm256_mul_ps(_mm256_set1_ps(wa[0]), _mm256_load_ps(g + p + 8 * u));
      b[u] = _mm256_mul_ps(_mm256_set1_ps(w[0]), _mm256_load_ps(gg + p + 8 * u));
    }
    for (int k = 1; k < 8; ++k) {
      const __m256 wak = _mm256_set1_ps(wa[k]), wk = _mm256_set1_ps(w[k]);
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u) {
        a[u] = _mm256_add_ps(a[u], _mm256_mul_ps(wak, _mm256_load_ps(g + 256 * k + p + 8 * u)));
        b[u] = _mm256_add_ps(b[u], _mm256_mul_ps(wk, _mm256_load_ps(gg + 256 * k + p + 8 * u)));
      }
    }
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) {
      _mm256_store_ps(A + p + 8 * u, a[u]);
      _mm256_store_ps(B + p + 8 * u, b[u]);
    }
  }
}

namespace {

// K picks in one pass over the grid (K independent compare chains). Each lane
// keeps its largest value and the first index that had it; the answer is the
// smallest such index among the lanes holding the maximum.
template <int K>
void pick_k(const float* A, const float* B, const float* h, int* out) {
  __m256 hv[K], mx[K], nan[K];
  __m256i best[K];
  for (int i = 0; i < K; ++i) {
    hv[i] = _mm256_set1_ps(h[i]);
    mx[i] = _mm256_set1_ps(-__builtin_inff());
    nan[i] = _mm256_setzero_ps();
    best[i] = _mm256_setzero_si256();
  }
  __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int p = 0; p < 256; p += 8) {
    const __m256 a = _mm256_load_ps(A + p), b = _mm256_load_ps(B + p);
#pragma GCC unroll 4
    for (int i = 0; i < K; ++i) {
      const __m256 x = _mm256_sub_ps(a, _mm256_mul_ps(b, hv[i]));
      const __m256 gt = _mm256_cmp_ps(x, mx[i], _CMP_GT_OQ);
      mx[i] = _mm256_blendv_ps(mx[i], x, gt);
      best[i] = _mm256_castps_si256(
          _mm256_blendv_ps(_mm256_castsi256_ps(best[i]), _mm256_castsi256_ps(idx), gt));
      nan[i] = _mm256_or_ps(nan[i], _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    }
    idx = _mm256_add_epi32(idx, _mm256_set1_epi32(8));
  }
  for (int i = 0; i < K; ++i) {
    if (_mm256_movemask_ps(nan[i])) {
      out[i] = first_nan(A, B, h[i]);
      continue;
    }
    alignas(32) float m[8];
    alignas(32) int32_t f[8];
    _mm256_store_ps(m, mx[i]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(f), best[i]);
    out[i] = lanes_argmax(m, f, 8);
  }
}

}  // namespace

void grid_pick_avx2(const float* A, const float* B, const float* h, int nh, int* out) {
  int i = 0;
  for (; i + 4 <= nh; i += 4) pick_k<4>(A, B, h + i, out + i);
  if (i + 2 <= nh) pick_k<2>(A, B, h + i, out + i), i += 2;
  if (i < nh) pick_k<1>(A, B, h + i, out + i);
}

namespace {
typedef float VF __attribute__((vector_size(32)));
typedef int32_t VI __attribute__((vector_size(32)));
}  // namespace

void fit_affine_avx2(const float* x, const float* w, int nmax, int sub, float* s, float* m) {
  lanes_fit_affine<VF, VI>(x, w, nmax, sub, s, m);
}

void fit_symmetric_avx2(const float* x, const float* w, int nmax, float* s) {
  lanes_fit_symmetric<VF, VI>(x, w, nmax, s);
}

}  // namespace lowbit
}  // namespace pyv4
