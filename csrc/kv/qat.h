// KV storage types and the official QAT rounding (spec §2, §3.4–§3.6, §4.2).
//
// A session stores its rows in one of three types:
//   F32  — exact; what the tests against transformers use.
//   BF16 — every value rounded to bf16 (no QAT).
//   FP8  — the official record (spec §4.2): the nope dims of a main KV row as
//          FP8 e4m3 with one UE8M0 (power-of-two) scale per 64 dims, the rope
//          dims as BF16; indexer keys after Hadamard as FP4 e2m1 with one UE8M0
//          scale per 32 dims.
// In every type a row is first *rounded* in fp32 (`RowCodec::round`) to exactly
// the values the stored bytes decode to, and the forward pass uses the rounded
// values everywhere (the current token's own attention included, as the
// official code does). So storing is lossless and a session read back from the
// cache computes exactly what the uncached forward computed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace pyv4 {

enum class KVType : uint8_t { F32 = 0, BF16 = 1, FP8 = 2 };

const char* kv_type_name(KVType t);
// "f32" | "bf16" | "fp8"; throws InputError otherwise.
KVType parse_kv_type(const std::string& s);

// ---- QAT building blocks (plain scalar reference; spec §2) ----------------

// Quantize-dequantize in place, blocks of `block` values along x (a trailing
// partial block is its own block). Scale per block = 2^ceil(log2(amax · 1/448))
// computed on fp32 bits like OFF's fast_round_scale, amax clamped to 1e-4;
// x ← e4m3(clamp(x/s, ±448)) · s with round-to-nearest-even.
void act_quant_fp8(float* x, int64_t n, int64_t block);
// Same with FP4 e2m1 (max 6, amax clamped to 6·2^-126), spec §2 fp4_act_quant.
void act_quant_fp4(float* x, int64_t n, int64_t block);
// x ← x · H_n · n^-½ (Sylvester order), n a power of two: in-place butterflies
// (pairs (i, i+h) for h = 1, 2, 4, …) then one multiply by n^-½ in fp32.
void hadamard(float* x, int64_t n);
float round_bf16(float v);
uint16_t to_bf16_bits(float v);  // v must already be bf16-representable (exact)

// FP8 e4m3fn / FP4 e2m1 value tables (exact).
float fp8_e4m3_value(uint8_t code);
float fp4_e2m1_value(uint8_t nibble);

// ---- Row codecs ------------------------------------------------------------

// How one kind of row (main KV row of head_dim, or an indexer key) is rounded,
// encoded and decoded in a KV type.
struct RowCodec {
  enum class Kind : uint8_t { Main, Index };
  KVType type = KVType::F32;
  Kind kind = Kind::Main;
  int64_t width = 0;  // floats per row
  int64_t nope = 0;   // Main: dims [0, nope) are FP8 in KVType::FP8; the rest BF16
  size_t bytes = 0;   // stored record size

  static RowCodec make(KVType t, Kind k, int64_t width, int64_t rope_dim);

  // The rounding the stored type implies, applied to a fresh fp32 row.
  //   Main:  F32 none; BF16 all dims to bf16; FP8 act_quant_fp8(nope, 64) + rope to bf16.
  //   Index: F32 none; BF16 all dims to bf16; FP8 hadamard + act_quant_fp4(32).
  void round(float* row) const;
  // Encodes a row that went through round(); decode(encode(round(x))) == round(x) bitwise.
  void encode(const float* row, uint8_t* dst) const;
  void decode(const uint8_t* src, float* row) const;
  // F32 rows are read in place; other types are decoded into `scratch`.
  const float* view(const uint8_t* src, float* scratch) const {
    if (type == KVType::F32) return reinterpret_cast<const float*>(src);
    decode(src, scratch);
    return scratch;
  }
};

// Decodes an FP4 indexer key record of KVType::FP8: width/2 bytes of e2m1
// nibbles (element 2k low, 2k+1 high), then one UE8M0 scale per 32 elements.
// The reference for kv_kernels' decode_fp4.
void decode_fp4_row(const uint8_t* src, int64_t width, float* row);

// Decodes a main-row record of KVType::FP8 (spec §4.2): nope e4m3 bytes, then
// width - nope bf16 rope values, then one UE8M0 scale per 64 nope elements. The
// reference for kv_kernels' decode_fp8_main.
void decode_fp8_main_row(const uint8_t* src, int64_t nope, int64_t width, float* row);

// The FP4 record of an indexer row of KVType::FP8 already rounded (hadamard +
// act_quant_fp4(32)): width/2 bytes of e2m1 nibbles (element 2k low, 2k+1
// high), then one UE8M0 scale per 32 elements; the `bytes` - width/2 - width/32
// bytes after them zero. RowCodec::encode's index records, and the reference
// of kv_kernels' index_round_fp4.
void encode_fp4_row(const float* row, int64_t width, uint8_t* dst, size_t bytes);

}  // namespace pyv4
