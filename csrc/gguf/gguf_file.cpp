#include "gguf/gguf_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
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

GGUFFile::GGUFFile(const std::string& path, bool resident) : path_(path), resident_(resident) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) {
    throw FormatError(path + ": cannot open: " + std::strerror(errno));
  }
  struct stat st;
  if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd_);
    throw FormatError(path + ": not a regular file");
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ < 4) {
    ::close(fd_);
    throw FormatError(path + ": truncated file: " + std::to_string(size_) +
                      " bytes, too small for a GGUF header");
  }
  void* p = resident ? read_resident(fd_, size_) : ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
  if (p == MAP_FAILED) {
    ::close(fd_);
    throw FormatError(path + (resident ? ": reading into memory failed: " : ": mmap failed: ") +
                      std::strerror(errno));
  }
  base_ = static_cast<const uint8_t*>(p);
  try {
    parse();
  } catch (...) {
    ::munmap(const_cast<uint8_t*>(base_), size_);
    ::close(fd_);
    throw;
  }
}

GGUFFile::~GGUFFile() {
  if (base_) ::munmap(const_cast<uint8_t*>(base_), size_);
  if (fd_ >= 0) ::close(fd_);
}

const GGUFValue* GGUFFile::find(const std::string& key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

const GGUFTensor* GGUFFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

void GGUFFile::parse() {
  Cursor c(base_, size_, path_);
  const uint32_t magic = c.get<uint32_t>("magic");
  if (magic != kMagic) {
    throw FormatError(path_ + ": not a GGUF file (bad magic bytes)");
  }
  version_ = c.get<uint32_t>("version");
  if (version_ != 2 && version_ != 3) {
    throw FormatError(path_ + ": unsupported GGUF version " + std::to_string(version_) +
                      " (pyv4 reads versions 2 and 3)");
  }
  const uint64_t n_tensors = c.get<uint64_t>("tensor count");
  const uint64_t n_kv = c.get<uint64_t>("metadata count");
  // Each tensor info / kv pair takes well over 8 bytes; bound counts by file size.
  if (n_tensors > size_ / 8 || n_kv > size_ / 8) {
    c.fail("implausible tensor count " + std::to_string(n_tensors) + " / metadata count " +
           std::to_string(n_kv) + " for a file of " + std::to_string(size_) + " bytes");
  }

  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = c.str("metadata key");
    const uint32_t type = c.get<uint32_t>("metadata value type");
    GGUFValue v = read_value(c, type, key);
    if (kv_.count(key)) c.fail("duplicate metadata key '" + key + "'");
    kv_.emplace(std::move(key), std::move(v));
  }
  if (const GGUFValue* a = find("general.alignment")) {
    if (!a->is_integer() || a->i <= 0 || (a->i & (a->i - 1)) != 0) {
      throw FormatError(path_ + ": general.alignment must be a power of two");
    }
    alignment_ = static_cast<uint32_t>(a->i);
  }

  tensors_.reserve(n_tensors);
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
  data_offset_ = (header_end + alignment_ - 1) / alignment_ * alignment_;
  const size_t data_size = size_ >= data_offset_ ? size_ - data_offset_ : 0;
  for (GGUFTensor& t : tensors_) {
    if (t.offset % alignment_ != 0) {
      throw FormatError(path_ + ": tensor '" + t.name + "' data offset " + std::to_string(t.offset) +
                        " is not aligned to " + std::to_string(alignment_));
    }
    if (t.offset > data_size || t.nbytes > data_size - t.offset) {
      throw FormatError(path_ + ": tensor '" + t.name + "' data [" + std::to_string(t.offset) +
                        ", " + std::to_string(t.offset + t.nbytes) +
                        ") lies outside the data section of " + std::to_string(data_size) +
                        " bytes (truncated file?)");
    }
    t.data = base_ + data_offset_ + t.offset;
  }

  // Fingerprint of the header bytes (metadata + tensor table).
  uint64_t h = 1469598103934665603ull;
  for (size_t k = 0; k < header_end; ++k) {
    h ^= base_[k];
    h *= 1099511628211ull;
  }
  fingerprint_ = h;
}

}  // namespace pyv4
