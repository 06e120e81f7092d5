// The hot loops of csrc/quant/quantize_lowbit.cpp per ISA (the IQ2_XXS grid
// search; the Q2_K / Q3_K / Q5_K / Q6_K sub-block fits, quant/quantize_lowbit_lanes.h); not
// part of the public API. Every lane computes one grid point p with
// the scalar operations of the reference, in its order, so each ISA gives the
// same bits (these files are compiled with -ffp-contract=off).
//   grid_dots: A[p] = sum_k wa[k] * g[k][p], B[p] = sum_k w[k] * gg[k][p], k = 0..7 in order
//   grid_pick: for each of nh values h[i], out[i] = the first p with the largest
//              A[p] - B[p] * h[i] (np.argmax: the first NaN if any); several h per
//              pass over the grid where the ISA has the registers
// g, gg: [8][256] floats (the grid's magnitudes by value slot, and their squares), 64-B aligned;
// A, B: 256 floats, 64-B aligned.
#pragma once

#include <cstdint>

namespace pyv4 {
namespace lowbit {

void grid_dots_sse2(const float* wa, const float* w, const float* g, const float* gg, float* A, float* B);
void grid_pick_sse2(const float* A, const float* B, const float* h, int nh, int* out);
void grid_dots_avx2(const float* wa, const float* w, const float* g, const float* gg, float* A, float* B);
void grid_pick_avx2(const float* A, const float* B, const float* h, int nh, int* out);
void grid_dots_avx512(const float* wa, const float* w, const float* g, const float* gg, float* A, float* B);
void grid_pick_avx512(const float* A, const float* B, const float* h, int nh, int* out);

// _fit_affine (Q2_K, Q5_K: scale s, offset m) of the sub-blocks of `sub` values
// (16 or 32) and _fit_symmetric (Q3_K, Q6_K: scale s) of the 16 sub-blocks of one
// super-block (x, w: 256 values), one sub-block per lane.
void fit_affine_sse2(const float* x, const float* w, int nmax, int sub, float* s, float* m);
void fit_symmetric_sse2(const float* x, const float* w, int nmax, float* s);
void fit_affine_avx2(const float* x, const float* w, int nmax, int sub, float* s, float* m);
void fit_symmetric_avx2(const float* x, const float* w, int nmax, float* s);
void fit_affine_avx512(const float* x, const float* w, int nmax, int sub, float* s, float* m);
void fit_symmetric_avx512(const float* x, const float* w, int nmax, float* s);

// Shared by the pick loops (baseline code): the first p whose A[p] - B[p] * h
// is NaN (numpy's argmax answer then); and, from per-lane maxima m and the
// first index that had each, the first index of the overall maximum.
int first_nan(const float* A, const float* B, float h);
int lanes_argmax(const float* m, const int32_t* first, int lanes);

}  // namespace lowbit
}  // namespace pyv4
