// Internal interface between the dispatcher (matmul.cpp) and the per-ISA kernel
// files (kernels_avx2.cpp, kernels_avx512.cpp). Not part of the public API.
//
// Integer kernels (Q8_0, Q4_0, Q4_K, MXFP4 in Fast mode) work on activations
// quantized per token in blocks of 32 (Q8_0-like): x ~= dx[b] * q[32b + i] with
// dx[b] = max|x| / 127 and q = round-to-nearest-even(x / dx[b]) in [-127, 127].
// Each weight block is read as unsigned codes u with value = dw * (u - k) (or,
// for Q4_K, dw_i * u - mw_i), so that
//     sum_i w_i x_i = dw * dx * (sum_i u_i q_i) - k * dw * (dx * sum_i q_i)
// and the second term uses cs[b] = cscale * dx[b] * sum_i q[32b + i], computed
// once per token.
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant/matmul.h"

namespace pyv4 {
namespace qk {

struct ActQ {
  int64_t n_tokens = 0;
  int64_t nb = 0;      // blocks of 32 per token
  int64_t nb_pad = 0;  // nb rounded up to even; padding blocks are all zero
  const int8_t* qs = nullptr;  // [n_tokens][nb_pad * 32]
  const float* dx = nullptr;   // [n_tokens][nb_pad]
  const float* cs = nullptr;   // [n_tokens][nb_pad]  cscale * dx * sum(q)

  const int8_t* q(int64_t t) const { return qs + t * nb_pad * 32; }
  const float* d(int64_t t) const { return dx + t * nb_pad; }
  const float* c(int64_t t) const { return cs + t * nb_pad; }
};

// Scalar quantizer (the definition of the activation format). Writes into the
// given buffers sized as ActQ describes.
void quantize_act_scalar(const float* X, int64_t ldx, int64_t n_tokens, int64_t cols,
                         float cscale, int8_t* qs, float* dx, float* cs);

// ---- AVX2 + FMA + F16C (kernels_avx2.cpp) ----
// For an integer weight type: the cscale its kernel needs (k/8 for a code offset
// k, 1 for Q4_K). Returns false for float weight types (no activation quantization).
bool act_cscale_avx2(GGMLType t, float* cscale);
void quantize_act_avx2(const float* X, int64_t ldx, int64_t n_tokens, int64_t cols, float cscale,
                       int8_t* qs, float* dx, float* cs);
// Y[t, r] for r in [r0, r1), all tokens. act is null for float weight types.
void gemm_avx2(const WeightMatrix& W, const ActQ* act, const float* X, int64_t ldx,
               int64_t n_tokens, float* Y, int64_t ldy, int64_t r0, int64_t r1);
uint64_t read_sum_avx2(const uint8_t* p, size_t bytes);

// ---- AVX-512 F/BW/VL/DQ + VNNI (kernels_avx512.cpp) ----
bool act_cscale_avx512(GGMLType t, float* cscale);
void gemm_avx512(const WeightMatrix& W, const ActQ* act, const float* X, int64_t ldx,
                 int64_t n_tokens, float* Y, int64_t ldy, int64_t r0, int64_t r1);

}  // namespace qk
}  // namespace pyv4
