// A growable scratch buffer whose data starts on a cache line, for per-thread
// buffers reused across calls: it grows to the largest request and keeps its
// memory (no per-call allocation, zeroing or page faults once grown); contents
// are not kept across a growth.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace pyv4 {

// The kernels read activations in 64-byte vectors, and a vector split across
// two lines costs two L1 accesses (std::vector's malloc alignment is 16:
// aligning the buffers made the 128-token lane GEMM 15-25 % faster on Zen 5,
// 2 threads).
template <class T>
class LineBuffer {
 public:
  void resize(size_t n) {
    if (n <= n_) return;
    raw_.resize(n * sizeof(T) + 64);
    n_ = n;
  }
  T* data() {
    uint8_t* p = raw_.data();
    return reinterpret_cast<T*>(p + (64 - reinterpret_cast<uintptr_t>(p) % 64) % 64);
  }
  // resize(n), then data().
  T* get(size_t n) {
    resize(n);
    return data();
  }

 private:
  std::vector<uint8_t> raw_;
  size_t n_ = 0;
};

}  // namespace pyv4
