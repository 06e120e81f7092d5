// AVX-512 grid search of the IQ2_XXS quantizer: sixteen grid points per vector
// (contract in quant/quantize_lowbit_kernels.h).
#include <immintrin.h>

#include <cstdint>

#include "quant/quantize_lowbit_kernels.h"
#include "quant/quantize_lowbit_lanes.h"

namespace pyv4 {
namespace lowbit {

void grid_dots_avx512(const float* wa, const float* w, const float* g, const float* gg, float* A, float* B) {
  // four vectors of grid points at a time: eight independent add chains (one
  // chain of 8 dependent adds per vector would wait on the add latency)
  for (int p = 0; p < 256; p += 4 * 16) {
    __m512 a[4], b[4];
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) {
      a[u] = _mm512_mul_ps(_mm512_set1_ps(wa[0]), _mm512_load_ps(g + p + 16 * u));
      b[u] = _mm512_mul_ps(_mm512_set1_ps(w[0]), _mm512_load_ps(gg + p + 16 * u));
    }
    for (int k = 1; k < 8; ++k) {
      const __m512 wak = _mm512_set1_ps(wa[k]), wk = _mm512_set1_ps(w[k]);
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u) {
        a[u] = _mm512_add_ps(a[u], _mm512_mul_ps(wak, _mm512_load_ps(g + 256 * k + p + 16 * u)));
        b[u] = _mm512_add_ps(b[u], _mm512_mul_ps(wk, _mm512_load_ps(gg + 256 * k + p + 16 * u)));
      }
    }
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) {
      _mm512_store_ps(A + p + 16 * u, a[u]);
      _mm512_store_ps(B + p + 16 * u, b[u]);
    }
  }
}

namespace {

// K picks in one pass over the grid (K independent compare chains). Each lane
// keeps its largest value and the first index that had it; the answer is the
// smallest such index among the lanes holding the maximum.
template <int K>
void pick_k(const float* A, const float* B, const float* h, int* out) {
  __m512 hv[K], mx[K];
  __m512i best[K];
  __mmask16 nan[K];
  for (int i = 0; i < K; ++i) {
    hv[i] = _mm512_set1_ps(h[i]);
    mx[i] = _mm512_set1_ps(-__builtin_inff());
    best[i] = _mm512_setzero_si512();
    nan[i] = 0;
  }
  __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int p = 0; p < 256; p += 16) {
    const __m512 a = _mm512_load_ps(A + p), b = _mm512_load_ps(B + p);
#pragma GCC unroll 8
    for (int i = 0; i < K; ++i) {
      const __m512 x = _mm512_sub_ps(a, _mm512_mul_ps(b, hv[i]));
      const __mmask16 gt = _mm512_cmp_ps_mask(x, mx[i], _CMP_GT_OQ);
      mx[i] = _mm512_mask_mov_ps(mx[i], gt, x);
      best[i] = _mm512_mask_mov_epi32(best[i], gt, idx);
      nan[i] |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    }
    idx = _mm512_add_epi32(idx, _mm512_set1_epi32(16));
  }
  for (int i = 0; i < K; ++i) {
    if (nan[i]) {
      out[i] = first_nan(A, B, h[i]);
      continue;
    }
    const __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(mx[i]));
    out[i] = _mm512_mask_reduce_min_epi32(_mm512_cmp_ps_mask(mx[i], top, _CMP_EQ_OQ), best[i]);
  }
}

}  // namespace

void grid_pick_avx512(const float* A, const float* B, const float* h, int nh, int* out) {
  int i = 0;
  for (; i + 8 <= nh; i += 8) pick_k<8>(A, B, h + i, out + i);
  if (i + 4 <= nh) pick_k<4>(A, B, h + i, out + i), i += 4;
  if (i + 2 <= nh) pick_k<2>(A, B, h + i, out + i), i += 2;
  if (i < nh) pick_k<1>(A, B, h + i, out + i);
}

namespace {
typedef float VF __attribute__((vector_size(64)));
typedef int32_t VI __attribute__((vector_size(64)));
}  // namespace

void fit_affine_avx512(const float* x, const float* w, int nmax, int sub, float* s, float* m) {
  lanes_fit_affine<VF, VI>(x, w, nmax, sub, s, m);
}

void fit_symmetric_avx512(const float* x, const float* w, int nmax, float* s) {
  lanes_fit_symmetric<VF, VI>(x, w, nmax, s);
}

}  // namespace lowbit
}  // namespace pyv4
