// The "split" row layout: the 4-bit block types Q4_0 and MXFP4 of a matrix
// rearranged at load time so the AVX-512 kernels read every weight with
// cache-line-aligned loads and no permutes.
//
// Why: GGML's Q4_0 and MXFP4 blocks are 18 and 17 bytes, so nearly every 64-byte
// load of the codes straddles two cache lines, and the decode needs word
// permutes to pull the codes out from between the scales. Streamed from DRAM
// that held these GEMVs at ~43-67 GB/s on a host that reads ~85 GB/s (Zen 5, 2
// threads); the same kernel math on split rows streams at 69-86 GB/s
// (bench/RESULTS.md, Kernels 05:21). Q8_0 keeps the GGML layout: it already
// streams at ~80 GB/s there, and split Q8_0 rows measured slower (52-57 GB/s).
//
// A split row is a sequence of chunks, each one cache line of scales and then
// the codes of the chunk's blocks (64 for MXFP4, 32 for Q4_0; fewer in a last
// partial chunk):
//   [scales: 64 bytes]       block o's raw scale at o * sb (the E8M0 byte of
//                            MXFP4, sb = 1; f16 bits for Q4_0, sb = 2); zero
//                            past the chunk's blocks
//   [codes: 16 bytes/block]  block o's 16 GGML code bytes at 16 * o (low nibbles
//                            elements 0..15, high nibbles 16..31)
// Rows need cols % 512 == 0 (whole 16-block super-groups: the GEMV has no tail),
// so chunk sizes are multiples of 64 bytes and with a 64-byte aligned base every
// load is aligned. The split row is the GGML row's size when its chunks are all
// full (MXFP4: cols % 2048 == 0, Q4_0: cols % 1024 == 0), otherwise at most 64
// bytes longer. (A scale area of two lines with one left unread, as Q4_0 rows
// of 1024 columns had in chunks of 64 blocks, halved the streaming rate.)
//
// The AVX-512 kernels read split rows natively (GEMV, the quad tiles, the
// lane GEMM's packer); the AVX2 and reference paths get GGML rows restored by
// unsplit_row (matmul.cpp, run_rows).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "quant/ggml_types.h"

namespace pyv4 {

struct WeightMatrix;
class ThreadPool;

namespace split {

// The geometry, shared by the kernels: internal linkage (static), as the
// AVX-512 files include this header too (see quant/blocks.h).
constexpr int kCodeBytes = 16;  // per block

// Scale bytes per block (sb above); 0 for types without a split form.
static constexpr int scale_bytes(GGMLType t) {
  return t == GGMLType::Q4_0 ? 2 : t == GGMLType::MXFP4 ? 1 : 0;
}
static constexpr int64_t chunk_blocks(GGMLType t) { return 64 / scale_bytes(t); }
// Bytes of a full chunk: the distance between chunks.
static constexpr int64_t chunk_bytes(GGMLType t) { return 64 + chunk_blocks(t) * kCodeBytes; }

// Block b of a split row: the offsets of its raw scale and of its 16 code bytes.
static constexpr int64_t scale_offset(GGMLType t, int64_t b) {
  return (b / chunk_blocks(t)) * chunk_bytes(t) + (b % chunk_blocks(t)) * scale_bytes(t);
}
static constexpr int64_t codes_offset(GGMLType t, int64_t b) {
  return (b / chunk_blocks(t)) * chunk_bytes(t) + 64 + (b % chunk_blocks(t)) * kCodeBytes;
}
static inline const uint8_t* block_scale(GGMLType t, const uint8_t* row, int64_t b) {
  return row + scale_offset(t, b);
}
static inline const uint8_t* block_codes(GGMLType t, const uint8_t* row, int64_t b) {
  return row + codes_offset(t, b);
}

// Whether a [rows, cols] matrix of type t can be split.
bool fits(GGMLType t, int64_t cols);

// Bytes of one split row (a multiple of 64).
size_t row_stride(GGMLType t, int64_t cols);

// GGML row -> split row, and back.
void split_row(GGMLType t, int64_t cols, const uint8_t* ggml, uint8_t* out);
void unsplit_row(GGMLType t, int64_t cols, const uint8_t* in, uint8_t* ggml);

// A split copy of W in its own 64-byte aligned memory (huge pages advised); out
// views it, the returned pointer owns it. release_source: the whole pages
// under W are then dropped from this process (MADV_DONTNEED), so memory holds
// one copy. For a read-only file mapping they stay in the page cache (clean,
// reclaimable) and would fault back in if read; anonymous memory (a resident
// file) reads back as zeros: the caller must never read W's bytes again.
// pool: the rows are copied on its threads (nullptr: on the caller's).
std::shared_ptr<uint8_t> split_copy(const WeightMatrix& W, WeightMatrix* out,
                                    bool release_source, ThreadPool* pool = nullptr);

}  // namespace split
}  // namespace pyv4
