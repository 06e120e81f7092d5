// Sink-softmax attention of a token's heads over gathered rows (spec §3.4;
// the CPU reference is attend_ref in csrc/kv/kv_kernels.cpp), rows in fp32,
// main KV records of KVType::FP8 decoded as they are read (spec §4.2), or the
// records of any KV type wherever they are (a table of addresses). Two kernels:
// the logits (one warp per row and head), then per head the max with the
// sink, the exponentials, their sum after the sink's and the weighted sum of
// the rows (each thread owns some of the d output dims and walks the rows in
// order, as the reference does).
#include <cuda_runtime.h>

#include "cuda/block_math.h"
#include "cuda/ops.h"
#include "cuda/reduce.cuh"
#include "cuda/runtime.h"

namespace pyv4 {
namespace cuda {

namespace {

constexpr int kWarps = 8, kThreads = 256;

// Element i of row r: fp32 rows, or main KV records of KVType::FP8 decoded in place.
struct F32Rows {
  const float* rows;
  int64_t d;
  __device__ float operator()(int64_t r, int64_t i) const { return rows[r * d + i]; }
};
struct Fp8Records {
  const uint8_t* recs;
  size_t stride;
  int64_t width, nope;
  __device__ float operator()(int64_t r, int64_t i) const {
    return cudamath::kv_main_elem(recs + r * stride, width, nope, i);
  }
};

// Records of any KV type reached through a table of device addresses.
struct RecordPtrs {
  const uint8_t* const* ptrs;
  int type;  // KVType
  int64_t width, nope;
  __device__ float operator()(int64_t r, int64_t i) const {
    const uint8_t* rec = ptrs[r];
    if (type == static_cast<int>(KVType::F32)) return reinterpret_cast<const float*>(rec)[i];
    if (type == static_cast<int>(KVType::BF16)) return qblocks::bf16_to_f32(qblocks::load_u16(rec + 2 * i));
    return cudamath::kv_main_elem(rec, width, nope, i);
  }
};

template <class Rows>
__global__ void logits_kernel(const float* q, int64_t d, Rows rows, const int32_t* idx, int64_t nk,
                              float scale, float* p) {
  const int64_t h = blockIdx.x, j = static_cast<int64_t>(blockIdx.y) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (j >= nk) return;
  const float* qh = q + h * d;
  const int64_t r = idx[j];
  float s = 0.0f;
  for (int64_t i = lane; i < d; i += 32) s = fmaf(qh[i], rows(r, i), s);
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (lane == 0) p[h * nk + j] = s * scale;
}

template <class Rows>
__global__ void softmax_rows_kernel(int64_t d, Rows rows, const int32_t* idx, int64_t nk,
                                    const float* sinks, float* p, float* out) {
  __shared__ float scratch[32];
  const int64_t h = blockIdx.x;
  float* s = p + h * nk;
  const float sink = sinks[h];
  float mx = sink;
  for (int64_t j = threadIdx.x; j < nk; j += blockDim.x) mx = fmaxf(mx, s[j]);
  mx = block_reduce(mx, MaxOp{}, scratch);
  float part = 0.0f;
  for (int64_t j = threadIdx.x; j < nk; j += blockDim.x) part += (s[j] = expf(s[j] - mx));
  const float denom = expf(sink - mx) + block_reduce(part, SumOp{}, scratch);
  __syncthreads();  // every s[j] written above is read by all threads below
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    float acc = 0.0f;
    for (int64_t j = 0; j < nk; ++j) acc = fmaf(s[j] / denom, rows(idx[j], i), acc);
    out[h * d + i] = acc;
  }
}

template <class Rows>
void attend_rows(const float* q, int64_t nh, int64_t d, Rows rows, const int32_t* idx, int64_t nk,
                 const float* sinks, float scale, float* p, float* out) {
  if (nh <= 0) return;
  if (nk > 0) {
    const dim3 grid(static_cast<unsigned>(nh), static_cast<unsigned>((nk + kWarps - 1) / kWarps));
    logits_kernel<<<grid, kThreads>>>(q, d, rows, idx, nk, scale, p);
    PYV4_CUDA_LAUNCHED(logits_kernel);
  }
  softmax_rows_kernel<<<static_cast<unsigned>(nh), kThreads>>>(d, rows, idx, nk, sinks, p, out);
  PYV4_CUDA_LAUNCHED(softmax_rows_kernel);
}

}  // namespace

void attend(const float* q, int64_t nh, int64_t d, const float* rows, const int32_t* idx, int64_t nk,
            const float* sinks, float scale, float* p, float* out) {
  attend_rows(q, nh, d, F32Rows{rows, d}, idx, nk, sinks, scale, p, out);
}

void attend_fp8(const float* q, int64_t nh, int64_t d, int64_t nope, const uint8_t* recs, size_t stride,
                const int32_t* idx, int64_t nk, const float* sinks, float scale, float* p, float* out) {
  attend_rows(q, nh, d, Fp8Records{recs, stride, d, nope}, idx, nk, sinks, scale, p, out);
}

void attend_records(const float* q, int64_t nh, int64_t d, KVType t, int64_t nope, const uint8_t* const* ptrs,
                    const int32_t* idx, int64_t nk, const float* sinks, float scale, float* p, float* out) {
  attend_rows(q, nh, d, RecordPtrs{ptrs, static_cast<int>(t), d, nope}, idx, nk, sinks, scale, p, out);
}

}  // namespace cuda
}  // namespace pyv4
