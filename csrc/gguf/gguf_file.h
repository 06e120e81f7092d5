// Read-only view of a GGUF v2/v3 file: metadata, tensor table, and tensor data
// in a private read-only mmap of the whole file, or (resident = true) in a
// read-only copy of the whole file in anonymous memory (huge pages when the
// kernel grants them): no page of it is reclaimed and re-read from disk later.
//
// Everything is validated while the header is parsed (bounds of every read,
// known tensor types, alignment, duplicate names, data within the file), so
// later code can index tensor data without further checks. Errors throw
// FormatError naming the file, the offset or tensor, and what was expected.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "quant/ggml_types.h"

namespace pyv4 {

enum class GGUFType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6,
  BOOL = 7, STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};

// One metadata value. Scalars use `i` (integers, bools), `f` (floats) or `s`;
// arrays keep their element type in `elem` and values in `ai`/`af`/`as`.
struct GGUFValue {
  GGUFType type = GGUFType::UINT32;
  GGUFType elem = GGUFType::UINT32;
  int64_t i = 0;
  double f = 0.0;
  std::string s;
  std::vector<int64_t> ai;
  std::vector<double> af;
  std::vector<std::string> as;

  bool is_array() const { return type == GGUFType::ARRAY; }
  bool is_integer() const;  // any integer or bool scalar
  bool is_number() const;   // integer or float scalar
  double as_double() const { return is_integer() ? static_cast<double>(i) : f; }
};

struct GGUFTensor {
  std::string name;
  GGMLType type;
  std::vector<int64_t> ne;  // GGML order: ne[0] is the contiguous dim (torch shape reversed)
  uint64_t offset = 0;      // from the start of the data section
  size_t nbytes = 0;
  const uint8_t* data = nullptr;

  int64_t n_elements() const;
  std::string shape_str() const;  // torch order, e.g. "[512, 64]"
};

class GGUFFile {
 public:
  explicit GGUFFile(const std::string& path, bool resident = false);
  ~GGUFFile();
  GGUFFile(const GGUFFile&) = delete;
  GGUFFile& operator=(const GGUFFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  size_t file_size() const { return size_; }
  bool resident() const { return resident_; }
  size_t data_offset() const { return data_offset_; }
  uint32_t alignment() const { return alignment_; }

  const std::map<std::string, GGUFValue>& metadata() const { return kv_; }
  const GGUFValue* find(const std::string& key) const;
  const std::vector<GGUFTensor>& tensors() const { return tensors_; }
  const GGUFTensor* find_tensor(const std::string& name) const;

  // 64-bit FNV-1a over the metadata and tensor table (not the tensor data):
  // identifies "the same model file layout" for session files.
  uint64_t fingerprint() const { return fingerprint_; }

 private:
  void parse();

  std::string path_;
  int fd_ = -1;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  bool resident_ = false;
  uint32_t version_ = 0;
  uint32_t alignment_ = 32;
  size_t data_offset_ = 0;
  uint64_t fingerprint_ = 0;
  std::map<std::string, GGUFValue> kv_;
  std::vector<GGUFTensor> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

}  // namespace pyv4
