// The small fp32 ops of the forward pass on the GPU (csrc/cuda/ops.cu,
// attention.cu), each with the CPU function it mirrors as its reference.
// Plain C++ interface; all pointers are device pointers; asynchronous on the
// default stream; CUDA errors throw CudaError.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kv/qat.h"

namespace pyv4 {
namespace cuda {

// rms_norm (csrc/model/ops.h) of each of n rows of dim floats: sum of squares
// in double, w == nullptr for the unweighted form.
void rms_norm(const float* X, const float* w, float* Y, int64_t n, int64_t dim, float eps);

// RopeTable::apply (csrc/model/ops.h) on each of n rows of `width` floats,
// row t rotated by pos[t]; inv_freq (half entries) is the host-built table
// (plain or YaRN, RopeTable::make), copied to the device.
void rope(float* V, int64_t n, int64_t width, const int64_t* pos, const float* inv_freq, int64_t half,
          bool inverse);

// The clamped SwiGLU of the experts (swiglu, csrc/model/ops.h): h = silu(min(g, limit)) *
// clamp(u, -limit, limit), limit 0 = no clamp; in place (h == g) is fine.
void swiglu(const float* g, const float* u, float* h, int64_t n, float limit);

// KvKernels::attend (csrc/kv/kv_kernels.h, spec §3.4) over gathered rows: the
// nk rows rows[idx[j]] (each d floats), nh heads of q, per-head sinks in the
// denominator only. p is scratch of nh * nk floats; out is [nh][d].
void attend(const float* q, int64_t nh, int64_t d, const float* rows, const int32_t* idx, int64_t nk,
            const float* sinks, float scale, float* p, float* out);
// The same over main KV records of KVType::FP8 (RowCodec, csrc/kv/qat.h): d
// dims of which the first nope are e4m3, records `stride` bytes apart.
void attend_fp8(const float* q, int64_t nh, int64_t d, int64_t nope, const uint8_t* recs, size_t stride,
                const int32_t* idx, int64_t nk, const float* sinks, float scale, float* p, float* out);

// The same over the records of a session's rows in any KV type (RowCodec,
// csrc/kv/qat.h: f32, bf16, or fp8 main records with nope e4m3 dims), row r
// being the record at the device address ptrs[r]: the rows stay where they
// are (the GPU's window ring, its compressed rows, the chunk's new records).
void attend_records(const float* q, int64_t nh, int64_t d, KVType t, int64_t nope, const uint8_t* const* ptrs,
                    const int32_t* idx, int64_t nk, const float* sinks, float scale, float* p, float* out);

// KvKernels::index_scores (spec §3.6) from FP4 key records of kv="fp8"
// (RowCodec Index, `stride` bytes apart): out[r] = Σ_h w[h] · ReLU(q_h · key_r),
// q [nih][dim] (not transposed). dim a multiple of 32, at most 512.
void index_scores_fp4(const float* q, const float* w, int64_t nih, int64_t dim, const uint8_t* keys,
                      size_t stride, int64_t n, float* out);

// RowCodec::round then RowCodec::encode (csrc/kv/qat.h) of kv="fp8" on n rows
// of `width` floats: main rows (nope e4m3 dims, the rest bf16) or, index,
// indexer keys (Hadamard + FP4). rows are rounded in place (the values the
// forward pass goes on with); recs gets one record per row, `stride` bytes
// apart (RowCodec::bytes).
void kv_encode_fp8(float* rows, int64_t n, int64_t width, int64_t nope, bool index, uint8_t* recs,
                   size_t stride);

// RowCodec::round then RowCodec::encode of any KV type on n rows (f32: the
// row's bytes; bf16: every value rounded to bf16; fp8: kv_encode_fp8).
void kv_encode(KVType t, float* rows, int64_t n, int64_t width, int64_t nope, bool index, uint8_t* recs,
               size_t stride);

// select_topk (csrc/model/attention.h) of each of m rows of n scores: the
// min(k, n) best (ties to the lower index) in row order, out [m][min(k, n)].
void topk(const float* scores, int64_t m, int64_t n, int64_t k, int64_t* out);

}  // namespace cuda
}  // namespace pyv4
