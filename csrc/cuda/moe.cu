// Routed-expert products grouped by expert (spec §3.7; the CPU groups the same
// way in csrc/model/moe.cpp): the (token, expert) pairs are sorted by expert on
// the host, each expert's tokens gathered into one block of rows, multiplied
// by the expert's row slice of the stacked tensor with cuda::matmul (GEMV for
// up to kGemvMaxTokens tokens, GEMM above), and the results scattered back to
// the pairs' rows. Every output equals the product of its token alone with
// the kernel its group size picks.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "common/error.h"
#include "cuda/matmul.h"
#include "cuda/runtime.h"

namespace pyv4 {
namespace cuda {

namespace {

// dst[i] = src[idx[i]] (rows of cols floats; lds / ldd floats apart).
__global__ void gather_rows_kernel(const float* src, int64_t lds, const int32_t* idx, int64_t n, int64_t cols,
                                   float* dst, int64_t ldd) {
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n * cols;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[(e / cols) * ldd + e % cols] = src[idx[e / cols] * lds + e % cols];
}

// dst[idx[i]] = src[i].
__global__ void scatter_rows_kernel(const float* src, int64_t lds, const int32_t* idx, int64_t n, int64_t cols,
                                    float* dst, int64_t ldd) {
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n * cols;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[idx[e / cols] * ldd + e % cols] = src[(e / cols) * lds + e % cols];
}

unsigned blocks_for(int64_t n) { return static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 65536)); }

}  // namespace

void moe_matmul(const DeviceMatrix& W, int64_t n_expert, const float* X, int64_t n_tokens, const int32_t* tokens,
                const int32_t* experts, int64_t n_pairs, float* Y, MoeScratch& scratch) {
  if (n_expert <= 0 || W.rows % n_expert != 0)
    throw InputError("cuda moe_matmul: " + std::to_string(W.rows) + " rows are not " + std::to_string(n_expert) +
                     " experts of equal size");
  const int64_t out = W.rows / n_expert, cols = W.cols;
  for (int64_t p = 0; p < n_pairs; ++p)
    if (tokens[p] < 0 || tokens[p] >= n_tokens || experts[p] < 0 || experts[p] >= n_expert)
      throw InputError("cuda moe_matmul: pair " + std::to_string(p) + " (token " + std::to_string(tokens[p]) +
                       ", expert " + std::to_string(experts[p]) + ") is out of range");
  if (n_pairs <= 0) return;
  // Pairs by expert, in pair order within an expert; per pair its token (to
  // gather) and its own index (to scatter), uploaded together.
  std::vector<int32_t> order(static_cast<size_t>(n_pairs));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return experts[a] < experts[b]; });
  std::vector<int32_t> idx(2 * order.size());
  for (size_t i = 0; i < order.size(); ++i) {
    idx[i] = tokens[order[i]];
    idx[order.size() + i] = order[i];
  }
  const size_t idx_bytes = sizeof(int32_t) * idx.size();
  scratch.idx.reserve(idx_bytes);
  std::memcpy(scratch.idx_up.take(idx_bytes), idx.data(), idx_bytes);
  scratch.idx_up.to_device(scratch.idx.data(), 0, idx_bytes);
  const int32_t* gather_idx = scratch.idx.as<int32_t>();
  const int32_t* scatter_idx = gather_idx + n_pairs;
  scratch.x.reserve(sizeof(float) * static_cast<size_t>(n_pairs * cols));
  scratch.y.reserve(sizeof(float) * static_cast<size_t>(n_pairs * out));
  float* xg = scratch.x.as<float>();
  float* yg = scratch.y.as<float>();
  gather_rows_kernel<<<blocks_for(n_pairs * cols), 256>>>(X, cols, gather_idx, n_pairs, cols, xg, cols);
  PYV4_CUDA_LAUNCHED(gather_rows_kernel);
  for (int64_t i0 = 0; i0 < n_pairs;) {
    const int32_t e = experts[order[i0]];
    int64_t i1 = i0;
    while (i1 < n_pairs && experts[order[i1]] == e) ++i1;
    matmul(W.row_slice(e * out, out), xg + i0 * cols, cols, i1 - i0, yg + i0 * out, out, scratch.matmul);
    i0 = i1;
  }
  scatter_rows_kernel<<<blocks_for(n_pairs * out), 256>>>(yg, out, scatter_idx, n_pairs, out, Y, out);
  PYV4_CUDA_LAUNCHED(scatter_rows_kernel);
  // No wait: the next call's copy into scratch.idx is queued after these
  // kernels, and growing it (cudaFree) waits for the device.
}

}  // namespace cuda
}  // namespace pyv4
