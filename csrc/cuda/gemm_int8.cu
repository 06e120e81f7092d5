// GEMM of prefill for the integer weight types on int8 tensor cores (WMMA
// 16x16x16, sm_72+; the build targets sm_80+). The arithmetic is the GEMV's
// and the CPU fast path's (cuda/block_math.h): activations quantized per group
// of 32 to int8 (launch_quantize_act), weights as int8 codes with a scale (and
// min) per half of 16, so every half group is one exact integer dot
//     Y[t, r] += dx_t * (d_rh * sum_{i in h} code_ri q_ti - m_rh * qsum_th)
// and the tensor cores compute the integer dots of 16 rows x 16 tokens x 16
// columns at once. Only the fp32 sums over the groups run in a different
// order from the GEMV's.
//
// A block computes 64 rows x 64 tokens with 4 warps (a 32 x 32 quarter each,
// 2 x 2 WMMA tiles). Per stage it decodes kStageGroups groups of its rows and
// tokens into shared memory (one load_group per row and group, the same
// decode the GEMV runs), then per half group each warp multiplies its tiles,
// stores the int32 products to its own shared scratch (WMMA's register
// layout is unspecified, so the per-row / per-token scales are applied from
// there) and adds the scaled halves to fp32 accumulators in registers.
#include <cuda_runtime.h>
#include <mma.h>

#include "cuda/launch.h"
#include "cuda/runtime.h"

namespace pyv4 {
namespace cuda {

using cudamath::ActGroup;
using cudamath::Group;

namespace {

constexpr int kRows = 64, kTokens = 64, kThreads = 128, kStageGroups = 4, kHalf = 16;

struct alignas(32) Stage {
  // codes[g][h][i][k]: column 16h + k of group g, row (or token) i of the tile;
  // each [i][k] plane is one 64 x 16 operand, 256-bit aligned as WMMA loads need
  int8_t w[kStageGroups][2][kRows][kHalf];
  int8_t x[kStageGroups][2][kTokens][kHalf];
  float wd[kStageGroups][2][kRows], wm[kStageGroups][2][kRows];
  float dx[kStageGroups][kTokens];
  float qsum[kStageGroups][2][kTokens];
};

template <GGMLType T>
__global__ void __launch_bounds__(kThreads)
    gemm_int8_kernel(const uint8_t* W, int64_t rows, int64_t groups, size_t stride, const ActGroup* act,
                     int64_t n_tokens, float* Y, int64_t ldy) {
  using namespace nvcuda;
  __shared__ Stage st;
  __shared__ alignas(32) int32_t prod[kThreads / 32][16 * 16];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kRows, t0 = static_cast<int64_t>(blockIdx.y) * kTokens;
  const int wr = (warp / 2) * 32, wt = (warp % 2) * 32;  // the warp's quarter of the tile
  float acc[2][2][8] = {};
  for (int64_t g0 = 0; g0 < groups; g0 += kStageGroups) {
    for (int e = tid; e < kStageGroups * kRows; e += kThreads) {
      const int gg = e / kRows, i = e % kRows;
      const int64_t r = r0 + i, g = g0 + gg;
      Group w{};
      if (r < rows && g < groups) cudamath::load_group(T, W + r * stride, g, &w);  // else zeros: adds 0
      for (int h = 0; h < 2; ++h) {
        int32_t* dst = reinterpret_cast<int32_t*>(st.w[gg][h][i]);
        for (int k = 0; k < 4; ++k) dst[k] = w.w[4 * h + k];
        st.wd[gg][h][i] = w.d[h];
        st.wm[gg][h][i] = w.m[h];
      }
    }
    for (int e = tid; e < kStageGroups * kTokens; e += kThreads) {
      const int gg = e / kTokens, i = e % kTokens;
      const int64_t t = t0 + i, g = g0 + gg;
      ActGroup a{};
      if (t < n_tokens && g < groups) a = act[t * groups + g];
      for (int h = 0; h < 2; ++h) {
        int32_t* dst = reinterpret_cast<int32_t*>(st.x[gg][h][i]);
        for (int k = 0; k < 4; ++k) dst[k] = a.q[4 * h + k];
        st.qsum[gg][h][i] = static_cast<float>(a.qsum[h]);
      }
      st.dx[gg][i] = a.dx;
    }
    __syncthreads();
    for (int gg = 0; gg < kStageGroups; ++gg) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, signed char, wmma::row_major> a;
          wmma::load_matrix_sync(a, &st.w[gg][h][wr + 16 * i][0], kHalf);
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            // B is columns x tokens; a token's 16 codes are contiguous: column-major
            wmma::fragment<wmma::matrix_b, 16, 16, 16, signed char, wmma::col_major> b;
            wmma::fragment<wmma::accumulator, 16, 16, 16, int> c;
            wmma::load_matrix_sync(b, &st.x[gg][h][wt + 16 * j][0], kHalf);
            wmma::fill_fragment(c, 0);
            wmma::mma_sync(c, a, b, c);
            wmma::store_matrix_sync(prod[warp], c, 16, wmma::mem_row_major);
            __syncwarp();
#pragma unroll
            for (int e = 0; e < 8; ++e) {  // lane owns products 8 lane .. 8 lane + 7 of the 16 x 16
              const int p = 8 * lane + e, ri = wr + 16 * i + p / 16, ti = wt + 16 * j + p % 16;
              const float dot = st.wd[gg][h][ri] * static_cast<float>(prod[warp][p]) -
                                st.wm[gg][h][ri] * st.qsum[gg][h][ti];
              acc[i][j][e] += st.dx[gg][ti] * dot;
            }
            __syncwarp();
          }
        }
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const int p = 8 * lane + e;
        const int64_t r = r0 + wr + 16 * i + p / 16, t = t0 + wt + 16 * j + p % 16;
        if (r < rows && t < n_tokens) Y[t * ldy + r] = acc[i][j][e];
      }
}

}  // namespace

void launch_gemm_int8(const DeviceMatrix& W, const ActGroup* act, int64_t n_tokens, float* Y, int64_t ldy) {
  const dim3 grid(static_cast<unsigned>((W.rows + kRows - 1) / kRows),
                  static_cast<unsigned>((n_tokens + kTokens - 1) / kTokens));
  with_type(W.type, [&](auto type) {
    constexpr GGMLType T = decltype(type)::value;
    if constexpr (cudamath::is_group_type(T)) {
      gemm_int8_kernel<T><<<grid, kThreads>>>(W.data, W.rows, W.cols / cudamath::kGroup, W.row_stride, act,
                                              n_tokens, Y, ldy);
      PYV4_CUDA_LAUNCHED(gemm_int8_kernel);
    }
  });
}

}  // namespace cuda
}  // namespace pyv4
