// GGML tensor types that pyv4 reads, with their block geometry (spec §10).
// The numeric values are GGML's on-disk type ids.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace pyv4 {

enum class GGMLType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q8_0 = 8,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
  MXFP4 = 39,
};

struct TypeTraits {
  const char* name;
  int64_t block_size;   // elements per block
  size_t block_bytes;   // bytes per block
  bool is_float_weight; // usable as a matmul weight
};

// Traits of a type id read from a file; returns false if pyv4 does not know it.
bool type_traits(uint32_t type_id, TypeTraits* out);
const TypeTraits& traits(GGMLType t);
const char* type_name(GGMLType t);

// Bytes of a row of n elements; throws FormatError if n is not a multiple of the
// block size (the message names `what`).
size_t row_bytes(GGMLType t, int64_t n, const std::string& what = "");

}  // namespace pyv4
