// Launchers of the weight-product kernels (gemv.cu, gemm.cu), called by the
// dispatch in matmul.cu. Pointers are device pointers; every launcher runs on
// the default stream and checks the launch.
#pragma once

#include <cstdint>
#include <type_traits>

#include "cuda/block_math.h"
#include "cuda/matmul.h"

namespace pyv4 {
namespace cuda {

// act[t * (cols / 32) + g] = group g of token t quantized (cudamath::quantize_group).
void launch_quantize_act(const float* X, int64_t ldx, int64_t n_tokens, int64_t cols,
                         cudamath::ActGroup* act);
// Integer weight types, n_tokens <= kGemvMaxTokens, act as launch_quantize_act wrote it.
void launch_gemv_int(const DeviceMatrix& W, const cudamath::ActGroup* act, int64_t n_tokens, float* Y,
                     int64_t ldy);
// F32 / F16 / BF16 weights, n_tokens <= kGemvMaxTokens.
void launch_gemv_float(const DeviceMatrix& W, const float* X, int64_t ldx, int64_t n_tokens, float* Y,
                       int64_t ldy);
// F32 / F16 / BF16 weights, any n_tokens (fp32 tiles decoded in shared memory).
void launch_gemm(const DeviceMatrix& W, const float* X, int64_t ldx, int64_t n_tokens, float* Y,
                 int64_t ldy);
// Integer weight types, any n_tokens, act as launch_quantize_act wrote it (int8
// tensor cores, gemm_int8.cu).
void launch_gemm_int8(const DeviceMatrix& W, const cudamath::ActGroup* act, int64_t n_tokens, float* Y,
                      int64_t ldy);
void launch_dequantize(const DeviceMatrix& W, float* Y);

// Calls f(std::integral_constant<GGMLType, T>{}) for the runtime type t, so
// kernels are instantiated per type (the decode switch folds away).
template <class F>
void with_type(GGMLType t, F&& f) {
  switch (t) {
    case GGMLType::F32: return f(std::integral_constant<GGMLType, GGMLType::F32>{});
    case GGMLType::F16: return f(std::integral_constant<GGMLType, GGMLType::F16>{});
    case GGMLType::BF16: return f(std::integral_constant<GGMLType, GGMLType::BF16>{});
    case GGMLType::Q8_0: return f(std::integral_constant<GGMLType, GGMLType::Q8_0>{});
    case GGMLType::Q4_0: return f(std::integral_constant<GGMLType, GGMLType::Q4_0>{});
    case GGMLType::IQ4_NL: return f(std::integral_constant<GGMLType, GGMLType::IQ4_NL>{});
    case GGMLType::Q4_K: return f(std::integral_constant<GGMLType, GGMLType::Q4_K>{});
    case GGMLType::Q5_K: return f(std::integral_constant<GGMLType, GGMLType::Q5_K>{});
    case GGMLType::Q6_K: return f(std::integral_constant<GGMLType, GGMLType::Q6_K>{});
    case GGMLType::MXFP4: return f(std::integral_constant<GGMLType, GGMLType::MXFP4>{});
    case GGMLType::Q2_K: return f(std::integral_constant<GGMLType, GGMLType::Q2_K>{});
    case GGMLType::Q3_K: return f(std::integral_constant<GGMLType, GGMLType::Q3_K>{});
    case GGMLType::IQ2_XXS: return f(std::integral_constant<GGMLType, GGMLType::IQ2_XXS>{});
    case GGMLType::IQ4_XS: return f(std::integral_constant<GGMLType, GGMLType::IQ4_XS>{});
    case GGMLType::IQ3_XXS: return f(std::integral_constant<GGMLType, GGMLType::IQ3_XXS>{});
    case GGMLType::IQ2_XS: return f(std::integral_constant<GGMLType, GGMLType::IQ2_XS>{});
    case GGMLType::IQ3_S: return f(std::integral_constant<GGMLType, GGMLType::IQ3_S>{});
    case GGMLType::IQ2_S: return f(std::integral_constant<GGMLType, GGMLType::IQ2_S>{});
    case GGMLType::IQ1_S: return f(std::integral_constant<GGMLType, GGMLType::IQ1_S>{});
    case GGMLType::IQ1_M: return f(std::integral_constant<GGMLType, GGMLType::IQ1_M>{});
    default: break;
  }
}

}  // namespace cuda
}  // namespace pyv4
