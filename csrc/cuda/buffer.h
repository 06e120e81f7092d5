// Device memory owned by RAII handles (plain C++; csrc/cuda/buffer.cu).
#pragma once

#include <cstddef>
#include <cstdint>

namespace pyv4 {
namespace cuda {

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;

  // A buffer holding a copy of `bytes` bytes of host memory.
  static DeviceBuffer from_host(const void* src, size_t bytes);
  // Copies the first `bytes` bytes to host memory (waits for the device).
  void to_host(void* dst, size_t bytes) const;
  // Grows (contents lost) to at least `bytes`; never shrinks.
  void reserve(size_t bytes);

  size_t size() const { return bytes_; }
  void* data() const { return ptr_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void release() noexcept;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace cuda
}  // namespace pyv4
