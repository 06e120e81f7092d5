#include "gguf/gguf_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "common/error.h"

namespace pyv4 {

bool GGUFValue::is_integer() const {
  switch (type) {
    case GGUFType::UINT8: case GGUFType::INT8: case GGUFType::UINT16: case GGUFType::INT16:
    case GGUFType::UINT32: case GGUFType::INT32: case GGUFType::UINT64: case GGUFType::INT64:
    case GGUFType::BOOL:
      return true;
    default:
      return false;
  }
}

bool GGUFValue::is_number() const {
  return is_integer() || type == GGUFType::FLOAT32 || type == GGUFType::FLOAT64;
}

int64_t GGUFTensor::n_elements() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

std::string GGUFTensor::shape_str() const {
  std::string s = "[";
  for (size_t k = ne.size(); k-- > 0;) {
    s += std::to_string(ne[k]);
    if (k) s += ", ";
  }
  return s + "]";
}

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little-endian
constexpr uint64_t kMaxDims = 4;

// Bounds-checked little-endian cursor over the mapped header.
class Cursor {
 public:
  Cursor(const uint8_t* base, size_t size, const std::string& path)
      : base_(base), size_(size), path_(path) {}

  size_t pos() const { return pos_; }
  void seek(size_t p) { pos_ = p; }

  [[noreturn]] void fail(const std::string& what) const {
    throw FormatError(path_ + ": " + what + " (at byte offset " + std::to_string(pos_) + ")");
  }
  void need(size_t n, const char* what) const {
    if (n > size_ - pos_) {
      throw FormatError(path_ + ": truncated file: reading " + what + " needs " +
                        std::to_string(n) + " bytes at offset " + std::to_string(pos_) +
                        " but the file has " + std::to_string(size_) + " bytes");
    }
  }
  template <class T>
  T get(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, base_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string str(const char* what) {
    const uint64_t n = get<uint64_t>(what);
    if (n > size_ - pos_) need(static_cast<size_t>(-1) / 2, what);
    std::string s(reinterpret_cast<const char*>(base_ + pos_), static_cast<size_t>(n));
    pos_ += n;
    return s;
  }

 private:
  const uint8_t* base_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& path_;
};

size_t scalar_size(GGUFType t) {
  switch (t) {
    case GGUFType::UINT8: case GGUFType::INT8: case GGUFType::BOOL: return 1;
    case GGUFType::UINT16: case GGUFType::INT16: return 2;
    case GGUFType::UINT32: case GGUFType::INT32: case GGUFType::FLOAT32: return 4;
    case GGUFType::UINT64: case GGUFType::INT64: case GGUFType::FLOAT64: return 8;
    default: return 0;
  }
}

void read_scalar(Cursor& c, GGUFType t, int64_t* i, double* f, const char* what) {
  switch (t) {
    case GGUFType::UINT8: *i = c.get<uint8_t>(what); break;
    case GGUFType::INT8: *i = c.get<int8_t>(what); break;
    case GGUFType::BOOL: *i = c.get<uint8_t>(what) != 0; break;
    case GGUFType::UINT16: *i = c.get<uint16_t>(what); break;
    case GGUFType::INT16: *i = c.get<int16_t>(what); break;
    case GGUFType::UINT32: *i = c.get<uint32_t>(what); break;
    case GGUFType::INT32: *i = c.get<int32_t>(what); break;
    case GGUFType::UINT64: *i = static_cast<int64_t>(c.get<uint64_t>(what)); break;
    case GGUFType::INT64: *i = c.get<int64_t>(what); break;
    case GGUFType::FLOAT32: *f = c.get<float>(what); break;
    case GGUFType::FLOAT64: *f = c.get<double>(what); break;
    default: c.fail(std::string("bad scalar type for ") + what);
  }
}

bool valid_value_type(uint32_t t) { return t <= static_cast<uint32_t>(GGUFType::FLOAT64); }

GGUFValue read_value(Cursor& c, uint32_t type, const std::string& key) {
  if (!valid_value_type(type)) {
    c.fail("metadata key '" + key + "' has unknown value type " + std::to_string(type));
  }
  GGUFValue v;
  v.type = static_cast<GGUFType>(type);
  if (v.type == GGUFType::STRING) {
    v.s = c.str("metadata string");
  } else if (v.type == GGUFType::ARRAY) {
    const uint32_t et = c.get<uint32_t>("array element type");
    if (!valid_value_type(et) || et == static_cast<uint32_t>(GGUFType::ARRAY)) {
      c.fail("metadata key '" + key + "' has an array of unsupported type " + std::to_string(et));
    }
    v.elem = static_cast<GGUFType>(et);
    const uint64_t n = c.get<uint64_t>("array length");
    // Every element takes at least one byte (strings at least 8): reject
    // lengths the file cannot hold before reserving memory for them.
    const size_t min_elem = v.elem == GGUFType::STRING ? 8 : scalar_size(v.elem);
    c.need(n > SIZE_MAX / min_elem ? SIZE_MAX : n * min_elem, "metadata array");
    if (v.elem == GGUFType::STRING) {
      v.as.reserve(n);
      for (uint64_t k = 0; k < n; ++k) v.as.push_back(c.str("metadata array string"));
    } else if (v.elem == GGUFType::FLOAT32 || v.elem == GGUFType::FLOAT64) {
      v.af.resize(n);
      int64_t dummy;
      for (uint64_t k = 0; k < n; ++k) read_scalar(c, v.elem, &dummy, &v.af[k], "array value");
    } else {
      v.ai.resize(n);
      double dummy;
      for (uint64_t k = 0; k < n; ++k) read_scalar(c, v.elem, &v.ai[k], &dummy, "array value");
    }
  } else {
    read_scalar(c, v.type, &v.i, &v.f, "metadata value");
  }
  return v;
}

}  // namespace

namespace {

// The whole file copied into anonymous memory (transparent huge pages asked for):
// pages that cannot be reclaimed and re-read behind the caller's back, unlike a
// file mapping. Returns MAP_FAILED with errno set on failure.
void* read_resident(int fd, size_t size) {
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return p;
#ifdef MADV_HUGEPAGE
  ::madvise(p, size, MADV_HUGEPAGE);
#endif
  uint8_t* dst = static_cast<uint8_t*>(p);
  size_t done = 0;
  while (done < size) {
    const size_t want = std::min<size_t>(size - done, size_t(64) << 20);
    const ssize_t got = ::pread(fd, dst + done, want, static_cast<off_t>(done));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      const int err = got == 0 ? EIO : errno;
      ::munmap(p, size);
      errno = err;
      return MAP_FAILED;
    }
    done += static_cast<size_t>(got);
  }
  ::mprotect(p, size, PROT_READ);
  return p;
}

}  // namespace

// One mapped file of the model, unmapped and closed when dropped.
struct GGUFFile::Shard {
  std::string path;
  int fd = -1;
  const uint8_t* base = nullptr;
  size_t size = 0;

  Shard(const std::string& p, bool resident) : path(p) {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw FormatError(path + ": cannot open: " + std::strerror(errno));
    struct stat st;
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      throw FormatError(path + ": not a regular file");
    }
    size = static_cast<size_t>(st.st_size);
    if (size < 4) {
      ::close(fd);
      throw FormatError(path + ": truncated file: " + std::to_string(size) +
                        " bytes, too small for a GGUF header");
    }
    void* m = resident ? read_resident(fd, size) : ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      ::close(fd);
      throw FormatError(path + (resident ? ": reading into memory failed: " : ": mmap failed: ") +
                        std::strerror(errno));
    }
    base = static_cast<const uint8_t*>(m);
  }
  ~Shard() {
    ::munmap(const_cast<uint8_t*>(base), size);
    ::close(fd);
  }
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;
};

namespace {

// llama.cpp's split naming: shard i (0-based) of n is PREFIX-%05d-of-%05d.gguf
// with i + 1 and n.
std::string split_suffix(int64_t i, int64_t n) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "-%05lld-of-%05lld.gguf", static_cast<long long>(i + 1),
                static_cast<long long>(n));
  return buf;
}

int64_t split_key(const std::map<std::string, GGUFValue>& kv, const char* key, int64_t dflt,
                  const std::string& path) {
  auto it = kv.find(key);
  if (it == kv.end()) return dflt;
  if (!it->second.is_integer() || it->second.type == GGUFType::BOOL) {
    throw FormatError(path + ": metadata key '" + key + "' must be an integer");
  }
  return it->second.i;
}

}  // namespace

GGUFFile::GGUFFile(const std::string& path, bool resident) : resident_(resident) {
  open_shards(path);
}

GGUFFile::~GGUFFile() = default;

size_t GGUFFile::file_size() const {
  size_t n = 0;
  for (const auto& sh : shards_) n += sh->size;
  return n;
}

void GGUFFile::open_shards(const std::string& path) {
  auto first = std::make_unique<Shard>(path, resident_);
  parse(*first, kv_);
  const int64_t n = split_key(kv_, "split.count", 1, path);
  const int64_t no = split_key(kv_, "split.no", 0, path);
  if (n < 1 || n > 65535 || no < 0 || no >= n) {
    throw FormatError(path + ": split.no " + std::to_string(no) + " / split.count " +
                      std::to_string(n) + " are not a shard of a split model");
  }
  if (n == 1) {
    shards_.push_back(std::move(first));
    shard_paths_ = {path};
    return;
  }
  const std::string own = split_suffix(no, n);
  if (path.size() <= own.size() || path.compare(path.size() - own.size(), own.size(), own) != 0) {
    throw FormatError(path + ": shard " + std::to_string(no + 1) + " of a model split into " +
                      std::to_string(n) + ", but its name does not end in '" + own +
                      "' (llama.cpp's gguf-split naming), so the other shards cannot be found");
  }
  const std::string prefix = path.substr(0, path.size() - own.size());
  if (no != 0) {  // the model's metadata is the first shard's: start over from it
    first.reset();
    kv_.clear();
    tensors_.clear();
    tensor_index_.clear();
    fingerprint_ = kFnvBasis;
  }
  for (int64_t i = 0; i < n; ++i) {
    const std::string p = prefix + split_suffix(i, n);
    std::unique_ptr<Shard> sh;
    std::map<std::string, GGUFValue> own_kv;
    if (i == 0 && first) {
      sh = std::move(first);
    } else {
      if (::access(p.c_str(), R_OK) != 0) {
        throw FormatError(p + ": cannot open shard " + std::to_string(i + 1) + " of " +
                          std::to_string(n) + " of the split model: " + std::strerror(errno));
      }
      sh = std::make_unique<Shard>(p, resident_);
      parse(*sh, i == 0 ? kv_ : own_kv, i, n);
    }
    shards_.push_back(std::move(sh));
    shard_paths_.push_back(p);
  }
  const int64_t want = split_key(kv_, "split.tensors.count", -1, path);
  if (want >= 0 && want != static_cast<int64_t>(tensors_.size())) {
    throw FormatError(path + ": the shards hold " + std::to_string(tensors_.size()) +
                      " tensors, but split.tensors.count says " + std::to_string(want));
  }
}

const GGUFValue* GGUFFile::find(const std::string& key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

const GGUFTensor* GGUFFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

void GGUFFile::parse(const Shard& sh, std::map<std::string, GGUFValue>& kv, int64_t shard_no,
                     int64_t shard_count) {
  const std::string& path = sh.path;
  const uint8_t* base = sh.base;
  const size_t size = sh.size;
  Cursor c(base, size, path);
  const uint32_t magic = c.get<uint32_t>("magic");
  if (magic != kMagic) {
    throw FormatError(path + ": not a GGUF file (bad magic bytes)");
  }
  const uint32_t version = c.get<uint32_t>("version");
  if (version != 2 && version != 3) {
    throw FormatError(path + ": unsupported GGUF version " + std::to_string(version) +
                      " (pyv4 reads versions 2 and 3)");
  }
  if (&kv == &kv_) version_ = version;  // the model's: the first shard's
  const uint64_t n_tensors = c.get<uint64_t>("tensor count");
  const uint64_t n_kv = c.get<uint64_t>("metadata count");
  // Each tensor info / kv pair takes well over 8 bytes; bound counts by file size.
  if (n_tensors > size / 8 || n_kv > size / 8) {
    c.fail("implausible tensor count " + std::to_string(n_tensors) + " / metadata count " +
           std::to_string(n_kv) + " for a file of " + std::to_string(size) + " bytes");
  }

  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = c.str("metadata key");
    const uint32_t type = c.get<uint32_t>("metadata value type");
    GGUFValue v = read_value(c, type, key);
    if (kv.count(key)) c.fail("duplicate metadata key '" + key + "'");
    kv.emplace(std::move(key), std::move(v));
  }
  if (shard_no >= 0 && (split_key(kv, "split.no", -1, path) != shard_no ||
                        split_key(kv, "split.count", -1, path) != shard_count)) {
    throw FormatError(path + ": its split.no / split.count do not say shard " +
                      std::to_string(shard_no + 1) + " of " + std::to_string(shard_count) +
                      " (a shard of another split?)");
  }
  uint32_t alignment = 32;
  if (auto a = kv.find("general.alignment"); a != kv.end()) {
    if (!a->second.is_integer() || a->second.i <= 0 || (a->second.i & (a->second.i - 1)) != 0) {
      throw FormatError(path + ": general.alignment must be a power of two");
    }
    alignment = static_cast<uint32_t>(a->second.i);
  }

  const size_t first_tensor = tensors_.size();
  tensors_.reserve(first_tensor + n_tensors);
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GGUFTensor t;
    t.name = c.str("tensor name");
    const uint32_t n_dims = c.get<uint32_t>("tensor dimension count");
    if (n_dims == 0 || n_dims > kMaxDims) {
      c.fail("tensor '" + t.name + "' has " + std::to_string(n_dims) + " dimensions (1..4 allowed)");
    }
    for (uint32_t d = 0; d < n_dims; ++d) {
      const int64_t n = c.get<int64_t>("tensor dimension");
      if (n <= 0 || n > (int64_t(1) << 40)) {
        c.fail("tensor '" + t.name + "' has invalid dimension " + std::to_string(n));
      }
      t.ne.push_back(n);
    }
    const uint32_t type_id = c.get<uint32_t>("tensor type");
    TypeTraits tt;
    if (!type_traits(type_id, &tt)) {
      c.fail("tensor '" + t.name + "' has unknown or unsupported tensor type " +
             std::to_string(type_id));
    }
    t.type = static_cast<GGMLType>(type_id);
    t.offset = c.get<uint64_t>("tensor data offset");
    if (t.ne[0] % tt.block_size != 0) {
      c.fail("tensor '" + t.name + "' of type " + tt.name + " has row length " +
             std::to_string(t.ne[0]) + ", not a multiple of the block size " +
             std::to_string(tt.block_size));
    }
    const int64_t n_el = t.n_elements();
    if (n_el > (int64_t(1) << 42)) c.fail("tensor '" + t.name + "' is implausibly large");
    t.nbytes = static_cast<size_t>(n_el / tt.block_size) * tt.block_bytes;
    if (tensor_index_.count(t.name)) c.fail("duplicate tensor name '" + t.name + "'");
    tensor_index_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
  }

  const size_t header_end = c.pos();
  const size_t data_offset = (header_end + alignment - 1) / alignment * alignment;
  const size_t data_size = size >= data_offset ? size - data_offset : 0;
  for (size_t k = first_tensor; k < tensors_.size(); ++k) {
    GGUFTensor& t = tensors_[k];
    if (t.offset % alignment != 0) {
      throw FormatError(path + ": tensor '" + t.name + "' data offset " + std::to_string(t.offset) +
                        " is not aligned to " + std::to_string(alignment));
    }
    if (t.offset > data_size || t.nbytes > data_size - t.offset) {
      throw FormatError(path + ": tensor '" + t.name + "' data [" + std::to_string(t.offset) +
                        ", " + std::to_string(t.offset + t.nbytes) +
                        ") lies outside the data section of " + std::to_string(data_size) +
                        " bytes (truncated file?)");
    }
    t.data = base + data_offset + t.offset;
  }

  // Fingerprint of the header bytes (metadata + tensor table), continued over
  // the shards in order.
  uint64_t h = fingerprint_;
  for (size_t k = 0; k < header_end; ++k) {
    h ^= base[k];
    h *= 1099511628211ull;
  }
  fingerprint_ = h;
}

}  // namespace pyv4
