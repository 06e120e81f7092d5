#include "kv/arena.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "common/error.h"

namespace pyv4 {

namespace {
constexpr size_t kSegmentBytes = size_t(1) << 30;  // virtual reservation per mapping

std::string errno_text() { return std::strerror(errno); }

// The file's descriptor; *where says which file it is, for later errors.
int open_backing_file(const std::string& path, std::string* where) {
  if (!path.empty()) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) throw InputError("cannot create KV backing file " + path + ": " + errno_text());
    *where = path;
    return fd;
  }
  const char* dir = std::getenv("PYV4_TMPDIR");
  if (!dir || !*dir) dir = std::getenv("TMPDIR");
  if (!dir || !*dir) dir = "/tmp";
  std::string tmpl = std::string(dir) + "/pyv4-kv-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  const int fd = ::mkostemp(buf.data(), O_CLOEXEC);
  if (fd < 0) throw InputError("cannot create a KV temporary file in " + std::string(dir) + ": " + errno_text());
  ::unlink(buf.data());  // the data lives as long as the mapping; nothing to clean up
  *where = "a temporary file in " + std::string(dir);
  return fd;
}
}  // namespace

MappedFile::MappedFile(const std::string& path, int fd_, size_t size_) : size(size_), fd(fd_) {
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (p == MAP_FAILED) {
    ::close(fd);
    throw FormatError("cannot map " + path + ": " + errno_text());
  }
  data = static_cast<const uint8_t*>(p);
}

MappedFile::~MappedFile() {
  if (data) ::munmap(const_cast<uint8_t*>(data), size);
  if (fd >= 0) ::close(fd);
}

Arena::Arena(const std::string& path, size_t chunk_bytes) : chunk_bytes_(chunk_bytes) {
  if (chunk_bytes == 0 || kSegmentBytes % chunk_bytes != 0) {
    throw std::logic_error("Arena: chunk size must divide the segment size");
  }
  fd_ = open_backing_file(path, &where_);
}

Arena::~Arena() {
  for (uint8_t* s : segments_) {
    if (s) ::munmap(s, kSegmentBytes);
  }
  if (fd_ >= 0) ::close(fd_);
}

int64_t Arena::new_id() {
  if (!free_ids_.empty()) {
    const int64_t id = free_ids_.back();
    free_ids_.pop_back();
    return id;
  }
  chunks_.emplace_back();
  return static_cast<int64_t>(chunks_.size()) - 1;
}

uint8_t* Arena::own_ptr(int64_t own) {
  const size_t per_seg = kSegmentBytes / chunk_bytes_;
  const size_t seg = static_cast<size_t>(own) / per_seg;
  const size_t need = (static_cast<size_t>(own) + 1) * chunk_bytes_;
  if (need > file_size_) {
    // Grow by doubling: the file is sparse, so unused space costs no disk.
    const size_t grown = std::max(need, std::min(file_size_ * 2, file_size_ + (size_t(1) << 30)));
    if (::ftruncate(fd_, static_cast<off_t>(grown)) != 0) {
      throw InputError("cannot grow the KV backing file (" + where_ + ") to " + std::to_string(grown >> 20) +
                       " MiB: " + errno_text());
    }
    file_size_ = grown;
  }
  if (segments_.size() <= seg) segments_.resize(seg + 1, nullptr);
  if (!segments_[seg]) {
    // Mapping past the end of the file is legal; only touching it is not, and
    // only chunks below file_size_ are ever touched.
    void* p = ::mmap(nullptr, kSegmentBytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd_,
                     static_cast<off_t>(seg * kSegmentBytes));
    if (p == MAP_FAILED) throw InputError("cannot map the KV backing file (" + where_ + "): " + errno_text());
    segments_[seg] = static_cast<uint8_t*>(p);
  }
  return segments_[seg] + (static_cast<size_t>(own) % per_seg) * chunk_bytes_;
}

int64_t Arena::alloc() {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t own;
  if (!free_own_.empty()) {
    own = free_own_.back();
    free_own_.pop_back();
  } else {
    own = n_own_++;
  }
  uint8_t* p = own_ptr(own);
  const int64_t id = new_id();
  chunks_[id] = Chunk{p, chunk_bytes_, 1, own};
  ++live_own_;
  return id;
}

void Arena::retain(int64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  ++chunks_[id].refs;
}

void Arena::release(int64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  Chunk& c = chunks_[id];
  if (--c.refs > 0) return;
  if (c.own >= 0) {
    free_own_.push_back(c.own);
    --live_own_;
  }
  c = Chunk{};
  free_ids_.push_back(id);
}

int64_t Arena::make_writable(int64_t id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (chunks_[id].own >= 0 && chunks_[id].refs == 1) return id;
  }
  const int64_t copy = alloc();
  std::memcpy(chunks_[copy].ptr, chunks_[id].ptr, chunks_[id].valid);
  release(id);
  return copy;
}

int64_t Arena::adopt(const std::shared_ptr<MappedFile>& file, const uint8_t* ptr, size_t valid) {
  std::lock_guard<std::mutex> lock(mu_);
  if (files_.empty() || files_.back() != file) files_.push_back(file);
  const int64_t id = new_id();
  chunks_[id] = Chunk{const_cast<uint8_t*>(ptr), valid, 1, -1};
  return id;
}

size_t Arena::file_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return file_size_;
}

int64_t Arena::live_chunks() const {
  std::lock_guard<std::mutex> lock(mu_);
  return live_own_;
}

}  // namespace pyv4
