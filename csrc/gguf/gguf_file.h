// Read-only view of a GGUF v2/v3 model: metadata, tensor table, and tensor data
// in a private read-only mmap of the whole file, or (resident = true) in a
// read-only copy of the whole file in anonymous memory (huge pages when the
// kernel grants them): no page of it is reclaimed and re-read from disk later.
//
// A model split into shards by llama.cpp's gguf-split convention (the files
// PREFIX-00001-of-0000N.gguf ... PREFIX-0000N-of-0000N.gguf, each a GGUF with
// split.no / split.count; the first holds the model's metadata) opens from any
// of its shards as one model: every shard is mapped and the tensor tables are
// joined. Community V4-Flash files (80-160 GB) come this way.
//
// Everything is validated while the header is parsed (bounds of every read,
// known tensor types, alignment, duplicate names, data within the file), so
// later code can index tensor data without further checks. Errors throw
// FormatError naming the file, the offset or tensor, and what was expected.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
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

  const std::string& path() const { return shard_paths_.front(); }  // the first shard
  const std::vector<std::string>& shard_paths() const { return shard_paths_; }
  uint32_t version() const { return version_; }
  size_t file_size() const;  // bytes of all shards together
  bool resident() const { return resident_; }

  const std::map<std::string, GGUFValue>& metadata() const { return kv_; }
  const GGUFValue* find(const std::string& key) const;
  const std::vector<GGUFTensor>& tensors() const { return tensors_; }
  const GGUFTensor* find_tensor(const std::string& name) const;

  // 64-bit FNV-1a over the metadata and tensor tables of the shards in order
  // (not the tensor data): identifies "the same model file layout" for
  // session files.
  uint64_t fingerprint() const { return fingerprint_; }

 private:
  struct Shard;  // one mapped file
  void open_shards(const std::string& path);
  // Parses `sh`'s header; appends its tensors. `kv` receives its metadata.
  // shard_no >= 0: the file must say it is that shard of shard_count.
  void parse(const Shard& sh, std::map<std::string, GGUFValue>& kv, int64_t shard_no = -1,
             int64_t shard_count = 1);

  std::vector<std::unique_ptr<Shard>> shards_;
  std::vector<std::string> shard_paths_;
  bool resident_ = false;
  uint32_t version_ = 0;
  static constexpr uint64_t kFnvBasis = 1469598103934665603ull;  // FNV-1a offset basis
  uint64_t fingerprint_ = kFnvBasis;
  std::map<std::string, GGUFValue> kv_;
  std::vector<GGUFTensor> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

}  // namespace pyv4
