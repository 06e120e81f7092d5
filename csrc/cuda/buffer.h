// Device memory and page-locked host memory owned by RAII handles (plain C++;
// csrc/cuda/buffer.cu).
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

// Device seconds per device-to-device copy of `bytes` (the bandwidth that
// bench/cuda_model.py states decode's effective bandwidth against).
double copy_seconds(size_t bytes, int reps);
// Device seconds per copy of `bytes` from pinned host memory to device
// `index`: the PCIe rate of the streaming cost model (cuda/stream_plan.h) and
// of the planner's predictions.
double upload_seconds(size_t bytes, int reps, int index = 0);

// Page-locked host memory (cudaMallocHost): the DMA engine reads and writes it
// directly, so copies from / to it run asynchronously to the host.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer();
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  // Grows (contents lost) to at least `bytes`; never shrinks. Waits for the
  // device first: a copy may still read the old memory.
  void reserve(size_t bytes);
  uint8_t* data() const { return ptr_; }
  size_t size() const { return bytes_; }

 private:
  void release() noexcept;
  uint8_t* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// A pinned staging area for asynchronous copies between the host and the
// device, in the order of a stream (nullptr: the default stream, where the
// kernels run). The host writes it only after the copies queued through it
// are done (take waits for them), so one area serves one transfer at a time.
class Staging {
 public:
  Staging();
  ~Staging();
  Staging(const Staging&) = delete;
  Staging& operator=(const Staging&) = delete;

  // `bytes` of the area, free to fill (waits for the copies queued before).
  uint8_t* take(size_t bytes);
  // Queues the copy of area[off, off + bytes) to dst / of src to area[off, ...).
  void to_device(void* dst, size_t off, size_t bytes, void* stream = nullptr);
  void from_device(size_t off, const void* src, size_t bytes, void* stream = nullptr);
  // Waits for the copies queued through the area (reports any device error);
  // then from_device's bytes can be read at data().
  void wait();
  uint8_t* data() const { return buf_.data(); }
  template <class T>
  T* as() const {
    return reinterpret_cast<T*>(buf_.data());
  }

 private:
  PinnedBuffer buf_;
  void* done_ = nullptr;  // cudaEvent_t recorded after the last queued copy
  bool pending_ = false;
};

}  // namespace cuda
}  // namespace pyv4
