#include "cuda/buffer.h"

#include <cuda_runtime.h>

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

}  // namespace cuda
}  // namespace pyv4
