#include "quant/ggml_types.h"

#include "common/error.h"

namespace pyv4 {

namespace {
struct Entry {
  uint32_t id;
  TypeTraits t;
};
// Block geometry from GGML (ggml.c type_traits); the K and IQ types are
// 256-element super-blocks (layouts in quant/blocks.h).
constexpr Entry kTypes[] = {
    {0, {"F32", 1, 4, true}},       {1, {"F16", 1, 2, true}},
    {2, {"Q4_0", 32, 18, true}},    {8, {"Q8_0", 32, 34, true}},
    {10, {"Q2_K", 256, 84, true}},  {11, {"Q3_K", 256, 110, true}},
    {12, {"Q4_K", 256, 144, true}}, {13, {"Q5_K", 256, 176, true}},
    {14, {"Q6_K", 256, 210, true}},  {16, {"IQ2_XXS", 256, 66, true}},
    {17, {"IQ2_XS", 256, 74, true}}, {18, {"IQ3_XXS", 256, 98, true}},
    {19, {"IQ1_S", 256, 50, true}},  {20, {"IQ4_NL", 32, 18, true}},
    {21, {"IQ3_S", 256, 110, true}},
    {22, {"IQ2_S", 256, 82, true}},  {23, {"IQ4_XS", 256, 136, true}},
    {24, {"I8", 1, 1, false}},       {25, {"I16", 1, 2, false}},
    {26, {"I32", 1, 4, false}},      {27, {"I64", 1, 8, false}},
    {28, {"F64", 1, 8, false}},      {29, {"IQ1_M", 256, 56, true}},
    {30, {"BF16", 1, 2, true}},     {39, {"MXFP4", 32, 17, true}},
};
}  // namespace

bool type_traits(uint32_t type_id, TypeTraits* out) {
  for (const auto& e : kTypes) {
    if (e.id == type_id) {
      if (out) *out = e.t;
      return true;
    }
  }
  return false;
}

const TypeTraits& traits(GGMLType t) {
  for (const auto& e : kTypes)
    if (e.id == static_cast<uint32_t>(t)) return e.t;
  throw FormatError("unknown GGML type id " + std::to_string(static_cast<uint32_t>(t)));
}

const char* type_name(GGMLType t) { return traits(t).name; }

size_t row_bytes(GGMLType t, int64_t n, const std::string& what) {
  const TypeTraits& tt = traits(t);
  if (n % tt.block_size != 0) {
    throw FormatError((what.empty() ? std::string("tensor") : what) + ": row length " +
                      std::to_string(n) + " is not a multiple of the " + tt.name +
                      " block size " + std::to_string(tt.block_size));
  }
  return static_cast<size_t>(n / tt.block_size) * tt.block_bytes;
}

}  // namespace pyv4
