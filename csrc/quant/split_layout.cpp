// The split row layout (quant/split_layout.h): geometry, the scalar conversions
// to and from GGML rows, and the loader's copy.
#include "quant/split_layout.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include "common/error.h"
#include "quant/matmul.h"

namespace pyv4 {
namespace split {

bool fits(GGMLType t, int64_t cols) { return scale_bytes(t) > 0 && cols > 0 && cols % 512 == 0; }

size_t row_stride(GGMLType t, int64_t cols) {
  const int64_t nb = cols / 32, cb = chunk_blocks(t), full = nb / cb, rem = nb % cb;
  size_t n = static_cast<size_t>(full * chunk_bytes(t));
  if (rem) n += 64 + static_cast<size_t>(rem) * kCodeBytes;
  return n;
}

void split_row(GGMLType t, int64_t cols, const uint8_t* ggml, uint8_t* out) {
  const int sb = scale_bytes(t);
  const size_t bb = static_cast<size_t>(sb + kCodeBytes);  // GGML block: scale, then codes
  std::memset(out, 0, row_stride(t, cols));
  for (int64_t b = 0; b < cols / 32; ++b) {
    std::memcpy(out + scale_offset(t, b), ggml + b * bb, sb);
    std::memcpy(out + codes_offset(t, b), ggml + b * bb + sb, kCodeBytes);
  }
}

void unsplit_row(GGMLType t, int64_t cols, const uint8_t* in, uint8_t* ggml) {
  const int sb = scale_bytes(t);
  const size_t bb = static_cast<size_t>(sb + kCodeBytes);
  for (int64_t b = 0; b < cols / 32; ++b) {
    std::memcpy(ggml + b * bb, block_scale(t, in, b), sb);
    std::memcpy(ggml + b * bb + sb, block_codes(t, in, b), kCodeBytes);
  }
}

std::shared_ptr<uint8_t> split_copy(const WeightMatrix& W, WeightMatrix* out,
                                    bool release_source, ThreadPool* pool) {
  if (W.split || !fits(W.type, W.cols))
    throw FormatError(std::string("split_copy: a ") + type_name(W.type) + " matrix of " +
                      std::to_string(W.cols) + " columns has no split form");
  const size_t stride = row_stride(W.type, W.cols);
  const size_t huge = size_t(2) << 20;
  const size_t bytes = std::max<size_t>(1, (stride * static_cast<size_t>(W.rows) + huge - 1) / huge) * huge;
  void* p = std::aligned_alloc(huge, bytes);
  if (!p) throw std::bad_alloc();
  std::shared_ptr<uint8_t> mem(static_cast<uint8_t*>(p), [](uint8_t* q) { std::free(q); });
#ifdef MADV_HUGEPAGE
  ::madvise(p, bytes, MADV_HUGEPAGE);  // weights are streamed: fewer TLB misses
#endif
  uint8_t* dst = mem.get();
  auto rows = [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r)
      split_row(W.type, W.cols, W.row(r), dst + static_cast<size_t>(r) * stride);
  };
  if (pool)
    pool->parallel_for(W.rows, 64, rows);
  else
    rows(0, W.rows, 0);
  if (release_source) {
    const uintptr_t page = 4096, lo = reinterpret_cast<uintptr_t>(W.data);
    const uintptr_t hi = lo + W.row_stride * static_cast<size_t>(W.rows);
    const uintptr_t a = (lo + page - 1) / page * page, b = hi / page * page;
    if (a < b) ::madvise(reinterpret_cast<void*>(a), b - a, MADV_DONTNEED);
  }
  *out = W;
  out->data = mem.get();
  out->row_stride = stride;
  out->split = true;
  return mem;
}

}  // namespace split
}  // namespace pyv4
