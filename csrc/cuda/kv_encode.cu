// The QAT rounding and the record encoding of kv="fp8" rows on the GPU (spec
// §2, §4.2; the CPU reference is RowCodec::round + RowCodec::encode,
// csrc/kv/qat.cpp): both run the per-block functions of kv/qat_math.h, so the
// GPU's rounded rows and records have the CPU's bits. A first version: one
// thread per row (a chunk's rows are few; the Hadamard rotation of an
// indexer key needs its whole row). kv_encode adds the f32 and bf16 records.
#include <cuda_runtime.h>

#include "cuda/ops.h"
#include "cuda/runtime.h"
#include "kv/qat_math.h"

namespace pyv4 {
namespace cuda {

namespace {

__global__ void kv_encode_kernel(float* rows, int64_t n, int64_t width, int64_t nope, bool index, uint8_t* recs,
                                 size_t stride) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= n) return;
  float* x = rows + r * width;
  uint8_t* dst = recs + r * stride;
  for (size_t b = 0; b < stride; ++b) dst[b] = 0;
  if (index) {  // spec §3.6: Hadamard, FP4 QAT per 32; e2m1 nibbles then UE8M0 scales
    qat_math::hadamard_inplace(x, width);
    for (int64_t i0 = 0; i0 < width; i0 += 32) {
      qat_math::act_quant_block(x + i0, 32, false);
      dst[width / 2 + i0 / 32] = qat_math::encode_block(x + i0, 32, false, dst, i0);
    }
    return;
  }
  // main row: nope dims FP8 QAT per 64 (e4m3 codes), rope dims bf16, then the scales
  uint8_t* scales = dst + nope + 2 * (width - nope);
  for (int64_t i0 = 0; i0 < nope; i0 += 64) {
    const int64_t len = nope - i0 < 64 ? nope - i0 : 64;
    qat_math::act_quant_block(x + i0, len, true);
    scales[i0 / 64] = qat_math::encode_block(x + i0, len, true, dst + i0, 0);
  }
  for (int64_t i = nope; i < width; ++i) {
    x[i] = qat_math::round_bf16(x[i]);
    const uint32_t b = qblocks::f32_to_bits(x[i]) >> 16;
    dst[nope + 2 * (i - nope)] = static_cast<uint8_t>(b);
    dst[nope + 2 * (i - nope) + 1] = static_cast<uint8_t>(b >> 8);
  }
}

// f32 and bf16 records: one thread per value (bf16: rounded as RowCodec::round, stored little-endian).
__global__ void kv_encode_plain_kernel(float* rows, int64_t n, int64_t width, bool bf16, uint8_t* recs,
                                       size_t stride) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= n * width) return;
  const int64_t r = e / width, i = e % width;
  uint8_t* dst = recs + r * stride;
  if (!bf16) {
    reinterpret_cast<float*>(dst)[i] = rows[e];  // an f32 record is 4-byte aligned (its stride is 4·width)
    return;
  }
  rows[e] = qat_math::round_bf16(rows[e]);
  const uint32_t b = qblocks::f32_to_bits(rows[e]) >> 16;
  dst[2 * i] = static_cast<uint8_t>(b);
  dst[2 * i + 1] = static_cast<uint8_t>(b >> 8);
}

}  // namespace

void kv_encode(KVType t, float* rows, int64_t n, int64_t width, int64_t nope, bool index, uint8_t* recs,
               size_t stride) {
  if (t == KVType::FP8) return kv_encode_fp8(rows, n, width, nope, index, recs, stride);
  if (n <= 0) return;
  const int64_t total = n * width;
  kv_encode_plain_kernel<<<static_cast<unsigned>((total + 255) / 256), 256>>>(rows, n, width, t == KVType::BF16,
                                                                              recs, stride);
  PYV4_CUDA_LAUNCHED(kv_encode_plain_kernel);
}

void kv_encode_fp8(float* rows, int64_t n, int64_t width, int64_t nope, bool index, uint8_t* recs,
                   size_t stride) {
  if (n <= 0) return;
  kv_encode_kernel<<<static_cast<unsigned>((n + 127) / 128), 128>>>(rows, n, width, nope, index, recs, stride);
  PYV4_CUDA_LAUNCHED(kv_encode_kernel);
}

}  // namespace cuda
}  // namespace pyv4
