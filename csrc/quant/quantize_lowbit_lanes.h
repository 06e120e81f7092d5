// The Q2_K / Q3_K / Q5_K / Q6_K sub-block fits of csrc/quant/quantize_lowbit.cpp (the
// reference: _fit_affine / _fit_symmetric in convert/quants_lowbit.py) with one
// sub-block per vector lane: F / I are GCC vectors of N floats / int32, and every
// lane runs the scalar float32 operations of its sub-block in the reference's
// order (np.sum's pairwise order, float64 where numpy promotes, round half to
// even, first-index argmax), so each ISA's instantiation gives the same bits.
// Included by quantize_lowbit{,_avx2,_avx512}.cpp (all compiled with
// -ffp-contract=off); internal linkage in each, so no copy can be merged across ISAs.
#pragma once

#include <cstdint>

namespace pyv4 {
namespace lowbit {
namespace {

template <class F>
F lanes_splat(float v) {
  const F zero = {};
  return zero + v;
}

template <class F, class I>
F lanes_abs(F v) {
  return (F)((I)v & 0x7fffffff);
}

// np.clip(np.rint(v), lo, hi) for bounds well inside +-2^22: below 2^22 in
// magnitude, adding and removing 1.5 * 2^23 rounds half to even, the sign is v's
// (rint(-0.3) = -0); larger values, inf and NaN pass as v (the clip then gives
// what it gives rint(v)); clip keeps v unless it is below lo / above hi.
template <class F, class I>
F lanes_rint_clip(F v, float lo, float hi) {
  const F magic = lanes_splat<F>(12582912.0f);
  const I small = lanes_abs<F, I>(v) < lanes_splat<F>(4194304.0f);
  F r = (v + magic) - magic;
  r = (F)(((I)r & 0x7fffffff) | ((I)v & (-0x7fffffff - 1)));
  r = small ? r : v;
  const F flo = lanes_splat<F>(lo), fhi = lanes_splat<F>(hi);
  r = r < flo ? flo : r;
  return r > fhi ? fhi : r;
}

// _div: a / b where b != 0, else +0.
template <class F, class I>
F lanes_div0(F a, F b) {
  const F zero = {};
  const I nz = b != zero;
  const F q = a / (nz ? b : lanes_splat<F>(1.0f));
  return nz ? q : zero;
}

// _div of a float64 numerator: divided in float64, rounded once to float32.
template <class F>
F lanes_div0_f64(double a, F b) {
  constexpr int N = sizeof(F) / sizeof(float);
  F r = {};
  for (int l = 0; l < N; ++l) r[l] = b[l] != 0 ? static_cast<float>(a / static_cast<double>(b[l])) : 0.0f;
  return r;
}

// np.sum of K (16 or 32) values per lane: +0 plus ((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7)),
// r_j = a_j + a_j+8 (+ a_j+16 + a_j+24, in that order).
template <int K, class F>
F lanes_sum(const F* a) {
  static_assert(K % 8 == 0 && K <= 128, "numpy's pairwise sum of 8..128 values");
  F r[8];
  for (int j = 0; j < 8; ++j) r[j] = a[j];
  for (int i = 8; i < K; i += 8)
    for (int j = 0; j < 8; ++j) r[j] = r[j] + a[i + j];
  const F zero = {};
  return zero + (((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7])));
}

// The reference's step k of np.arange(-9, 10) * float32(0.1) (float64).
inline double lanes_step(int k) { return k * static_cast<double>(0.1f); }

// Sub-blocks s0 .. s0+N-1 of K values of a super-block (x, w: 256 values) as
// [element][lane]; lanes past the super-block's 256 / K sub-blocks get zeros.
template <int K, class F>
void lanes_load(const float* x, const float* w, int s0, F* X, F* W) {
  constexpr int N = sizeof(F) / sizeof(float);
  for (int i = 0; i < K; ++i)
    for (int l = 0; l < N; ++l) {
      const bool in = s0 + l < 256 / K;
      X[i][l] = in ? x[K * (s0 + l) + i] : 0.0f;
      W[i][l] = in ? w[K * (s0 + l) + i] : 0.0f;
    }
}

// _fit_affine of the 256 / K sub-blocks of K values: x ~ s*q - m, q in 0..nmax,
// per sub-block the candidate with the smallest weighted error (s = 0, m =
// -min(x, 0) if none fits).
template <class F, class I, int K>
void lanes_fit_affine_k(const float* x, const float* w, int nmax, float* out_s, float* out_m) {
  constexpr int N = sizeof(F) / sizeof(float);
  const F zero = {};
  for (int s0 = 0; s0 < 256 / K; s0 += N) {
    F X[K], W[K], T[K];
    lanes_load<K>(x, w, s0, X, W);
    F mn = X[0], mx = X[0];
    for (int i = 1; i < K; ++i) {
      mn = X[i] < mn ? X[i] : mn;
      mx = X[i] > mx ? X[i] : mx;
    }
    const F lo = mn < zero ? mn : zero, span = mx - lo;
    F best_err = lanes_splat<F>(__builtin_inff()), best_s = zero, best_m = -lo;
    for (int i = 0; i < K; ++i) T[i] = W[i] * X[i];
    const F sw = lanes_sum<K>(W), swx = lanes_sum<K>(T);
    for (int k = -9; k <= 9; ++k) {
      const F iscale = lanes_div0_f64(nmax + lanes_step(k), span);
      F Q[K], WQ[K], WQQ[K], WQX[K];
      for (int i = 0; i < K; ++i) {
        Q[i] = lanes_rint_clip<F, I>(iscale * (X[i] - lo), 0.0f, static_cast<float>(nmax));
        WQ[i] = W[i] * Q[i];
        WQQ[i] = WQ[i] * Q[i];
        WQX[i] = WQ[i] * X[i];
      }
      const F swq = lanes_sum<K>(WQ), swqq = lanes_sum<K>(WQQ), swqx = lanes_sum<K>(WQX);
      const F det = sw * swqq - swq * swq;
      F s = lanes_div0<F, I>(sw * swqx - swq * swx, det);
      F m = lanes_div0<F, I>(swq * swqx - swqq * swx, det);
      const I neg = m < zero;  // an offset below zero is not representable: refit the scale alone
      s = neg ? lanes_div0<F, I>(swqx, swqq) : s;
      m = neg ? zero : m;
      for (int i = 0; i < K; ++i) {
        const F e = s * Q[i] - m - X[i];
        T[i] = W[i] * (e * e);
      }
      const F err = lanes_sum<K>(T);
      const I better = (det > zero) & (s > zero) & (err < best_err);
      best_err = better ? err : best_err;
      best_s = better ? s : best_s;
      best_m = better ? m : best_m;
    }
    for (int l = 0; l < N && s0 + l < 256 / K; ++l) {
      out_s[s0 + l] = best_s[l];
      out_m[s0 + l] = best_m[l];
    }
  }
}

// _fit_affine of sub-blocks of `sub` values: 16 (Q2_K) or 32 (Q5_K).
template <class F, class I>
void lanes_fit_affine(const float* x, const float* w, int nmax, int sub, float* out_s, float* out_m) {
  if (sub == 32)
    lanes_fit_affine_k<F, I, 32>(x, w, nmax, out_s, out_m);
  else
    lanes_fit_affine_k<F, I, 16>(x, w, nmax, out_s, out_m);
}

// _fit_symmetric of the 16 sub-blocks: x ~ s*q, q in -nmax..nmax-1, the value of
// largest magnitude (the first of equals) mapped near -nmax.
template <class F, class I>
void lanes_fit_symmetric(const float* x, const float* w, int nmax, float* out_s) {
  constexpr int N = sizeof(F) / sizeof(float);
  const F zero = {};
  for (int s0 = 0; s0 < 16; s0 += N) {
    F X[16], W[16];
    lanes_load<16>(x, w, s0, X, W);
    F am = lanes_abs<F, I>(X[0]), amax = X[0];
    for (int i = 1; i < 16; ++i) {
      const F a = lanes_abs<F, I>(X[i]);
      const I upd = ~(a <= am) & (am == am);  // numpy's argmax: a NaN wins and stays
      am = upd ? a : am;
      amax = upd ? X[i] : amax;
    }
    F best = lanes_splat<F>(-1.0f), best_s = zero;
    for (int k = -9; k <= 9; ++k) {
      const F iscale = lanes_div0_f64(-(nmax + lanes_step(k)), amax);
      F WQQ[16], WQX[16];
      for (int i = 0; i < 16; ++i) {
        const F q = lanes_rint_clip<F, I>(iscale * X[i], static_cast<float>(-nmax), static_cast<float>(nmax - 1));
        const F wq = W[i] * q;
        WQX[i] = wq * X[i];
        WQQ[i] = wq * q;
      }
      const F swqx = lanes_sum<16>(WQX), swqq = lanes_sum<16>(WQQ);
      const F score = lanes_div0<F, I>(swqx * swqx, swqq);
      const I better = (swqq > zero) & (score > best);
      best = better ? score : best;
      best_s = better ? lanes_div0<F, I>(swqx, swqq) : best_s;
    }
    for (int l = 0; l < N; ++l) out_s[s0 + l] = best_s[l];
  }
}

}  // namespace
}  // namespace lowbit
}  // namespace pyv4
