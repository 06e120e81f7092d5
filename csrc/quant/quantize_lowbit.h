// Importance-weighted quantizers of the 2- to 6-bit GGML types Q2_K, Q3_K,
// IQ2_XXS, IQ4_XS, Q5_K and Q6_K: the searches of convert/quants_lowbit.py (the readable numpy
// reference, which documents the method), run per 256-value super-block on the
// thread pool. Every float operation is the reference's, in its order and
// precision (float32, float64 where numpy promotes, numpy's pairwise sums, its
// first-index argmax / argmin), so the bytes equal the reference's;
// tests/test_quantize_lowbit.py holds them to that.
#pragma once

#include <cstdint>

#include "common/thread_pool.h"
#include "quant/ggml_types.h"

namespace pyv4 {

// InputError unless quantize_lowbit can encode t (Q2_K, Q3_K, IQ2_XXS, IQ4_XS, Q5_K, Q6_K) for
// rows of `cols` values (a multiple of 256), with an importance matrix if t needs one.
void check_lowbit_args(GGMLType t, int64_t rows, int64_t cols, bool has_importance);

// rows x cols float32 values (row r at x + r * cols; cols a multiple of 256)
// -> rows x (cols / 256) GGML blocks of type t at out. `importance`: nullptr
// (unweighted; not allowed for IQ2_XXS) or per-element weights, row r at
// importance + r * importance_row_stride (stride 0: one row for all). Checks
// its arguments (InputError). The blocks are split over `pool`'s threads.
void quantize_lowbit(GGMLType t, const float* x, int64_t rows, int64_t cols,
                     const float* importance, int64_t importance_row_stride, uint8_t* out,
                     ThreadPool& pool);

// float32 -> IEEE half bits, rounded to nearest even (numpy's astype(float16)).
uint16_t f32_to_f16_bits(float v);

}  // namespace pyv4
