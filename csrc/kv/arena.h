// Chunked, memory-mapped row storage shared by a session and its forks
// (spec §4: the KV rows of a 1M-token context are GBs; they live in a file, not
// in RAM).
//
// An Arena hands out fixed-size chunks. Its own chunks live in one backing
// file (an unlinked temporary file by default, or a path the user gives) that
// grows sparsely by doubling; the file is mapped in 1 GiB segments reserved up
// front, so chunk addresses never move and no mremap is needed. Chunks of a
// loaded session file are adopted read-only straight from that file's mapping.
//
// Chunks are reference-counted: a fork retains every chunk of its parent and
// both copy a chunk before writing to it if anyone else still holds it
// (copy-on-write), so immutable compressed rows are shared, never copied.
// Resident memory is only what the OS keeps of the mapped pages.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace pyv4 {

// A read-only mapping of a whole file, kept alive by the arenas using it.
struct MappedFile {
  MappedFile(const std::string& path, int fd, size_t size);  // takes ownership of fd
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data = nullptr;
  size_t size = 0;
  int fd = -1;
};

class Arena {
 public:
  // path empty: an unlinked temporary file under $PYV4_TMPDIR, $TMPDIR or /tmp.
  Arena(const std::string& path, size_t chunk_bytes);
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  size_t chunk_bytes() const { return chunk_bytes_; }

  int64_t alloc();  // a new writable chunk (refcount 1); contents unspecified
  void retain(int64_t id);
  void release(int64_t id);
  // The chunk's bytes. Writing is allowed only through make_writable.
  const uint8_t* data(int64_t id) const { return chunks_[id].ptr; }
  // Returns id itself if it is an own chunk held only by the caller, else a
  // fresh own copy (the caller's reference moves to the copy).
  int64_t make_writable(int64_t id);
  uint8_t* wdata(int64_t id) { return chunks_[id].ptr; }  // after make_writable
  size_t valid_bytes(int64_t id) const { return chunks_[id].valid; }
  // Adopts `valid` bytes at ptr (inside `file`) as a read-only chunk, refcount 1.
  int64_t adopt(const std::shared_ptr<MappedFile>& file, const uint8_t* ptr, size_t valid);

  size_t file_bytes() const;    // size of the own backing file
  int64_t live_chunks() const;  // own chunks in use

 private:
  struct Chunk {
    uint8_t* ptr = nullptr;
    size_t valid = 0;
    uint32_t refs = 0;
    int64_t own = -1;  // index in the own file, -1 for adopted chunks
  };
  int64_t new_id();
  uint8_t* own_ptr(int64_t own_index);  // maps the segment and grows the file as needed

  mutable std::mutex mu_;
  size_t chunk_bytes_;
  int fd_ = -1;
  std::string where_;  // the backing file, for errors: its path, or "a temporary file in DIR"
  size_t file_size_ = 0;
  std::vector<uint8_t*> segments_;
  std::vector<Chunk> chunks_;
  std::vector<int64_t> free_ids_, free_own_;
  int64_t n_own_ = 0, live_own_ = 0;
  std::vector<std::shared_ptr<MappedFile>> files_;
};

}  // namespace pyv4
