#include "cuda/buffer.h"

#include <cuda_runtime.h>

#include <cstring>
#include <string>
#include <utility>

#include "cuda/runtime.h"

namespace pyv4 {
namespace cuda {

DeviceBuffer::DeviceBuffer(size_t bytes) {
  require_device();
  // cudaMalloc(0) hands out no pointer; one byte keeps data() valid.
  PYV4_CUDA_CHECK_AS(cudaMalloc(&ptr_, bytes ? bytes : 1),
                     ("cudaMalloc of " + std::to_string(bytes) + " bytes").c_str());
  bytes_ = bytes;
}

DeviceBuffer::~DeviceBuffer() { release(); }

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept
    : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    release();
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::release() noexcept {
  // An error here (a device lost after a fault) cannot be reported from a
  // destructor; the fault itself was reported by the call that saw it.
  if (ptr_) cudaFree(ptr_);
  ptr_ = nullptr;
  bytes_ = 0;
}

DeviceBuffer DeviceBuffer::from_host(const void* src, size_t bytes) {
  DeviceBuffer b(bytes);
  if (bytes) PYV4_CUDA_CHECK(cudaMemcpy(b.ptr_, src, bytes, cudaMemcpyHostToDevice));
  return b;
}

void DeviceBuffer::to_host(void* dst, size_t bytes) const {
  if (bytes > bytes_)
    throw CudaError("DeviceBuffer::to_host: " + std::to_string(bytes) + " bytes asked of a buffer of " +
                    std::to_string(bytes_));
  if (bytes) PYV4_CUDA_CHECK(cudaMemcpy(dst, ptr_, bytes, cudaMemcpyDeviceToHost));
}

void DeviceBuffer::reserve(size_t bytes) {
  if (ptr_ && bytes <= bytes_) return;
  release();  // first: old and new need not fit together
  *this = DeviceBuffer(bytes);
}

PinnedBuffer::~PinnedBuffer() { release(); }

void PinnedBuffer::release() noexcept {
  if (ptr_) cudaFreeHost(ptr_);  // errors: as DeviceBuffer::release
  ptr_ = nullptr;
  bytes_ = 0;
}

void PinnedBuffer::reserve(size_t bytes) {
  if (ptr_ && bytes <= bytes_) return;
  require_device();
  PYV4_CUDA_CHECK(cudaDeviceSynchronize());
  release();
  void* p = nullptr;
  PYV4_CUDA_CHECK_AS(cudaMallocHost(&p, bytes ? bytes : 1),
                     ("cudaMallocHost of " + std::to_string(bytes) + " bytes").c_str());
  ptr_ = static_cast<uint8_t*>(p);
  bytes_ = bytes;
}

Staging::Staging() {
  require_device();
  cudaEvent_t e;
  PYV4_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  done_ = e;
}

Staging::~Staging() {
  if (done_) {
    cudaEventSynchronize(static_cast<cudaEvent_t>(done_));  // no copy may outlive the memory
    cudaEventDestroy(static_cast<cudaEvent_t>(done_));
  }
}

uint8_t* Staging::take(size_t bytes) {
  wait();
  buf_.reserve(bytes);
  return buf_.data();
}

void Staging::to_device(void* dst, size_t off, size_t bytes, void* stream) {
  if (!bytes) return;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  PYV4_CUDA_CHECK(cudaMemcpyAsync(dst, buf_.data() + off, bytes, cudaMemcpyHostToDevice, s));
  PYV4_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(done_), s));
  pending_ = true;
}

void Staging::from_device(size_t off, const void* src, size_t bytes, void* stream) {
  if (!bytes) return;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  PYV4_CUDA_CHECK(cudaMemcpyAsync(buf_.data() + off, src, bytes, cudaMemcpyDeviceToHost, s));
  PYV4_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(done_), s));
  pending_ = true;
}

void Staging::wait() {
  if (!pending_) return;
  pending_ = false;
  PYV4_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(done_)));
}

double copy_seconds(size_t bytes, int reps) {
  const DeviceBuffer src(bytes), dst(bytes);
  return seconds_per_call(
      [&] { PYV4_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), bytes, cudaMemcpyDeviceToDevice)); }, reps);
}

double upload_seconds(size_t bytes, int reps, int index) {
  const DeviceScope on(index);
  const DeviceBuffer dev(bytes);
  PinnedBuffer host;
  host.reserve(bytes);
  std::memset(host.data(), 0, bytes);  // touched: no first-use page faults in the timing
  return seconds_per_call(
      [&] { PYV4_CUDA_CHECK(cudaMemcpyAsync(dev.data(), host.data(), bytes, cudaMemcpyHostToDevice)); }, reps);
}

}  // namespace cuda
}  // namespace pyv4
