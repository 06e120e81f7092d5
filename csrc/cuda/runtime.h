// The CUDA runtime as the rest of pyv4 sees it: plain C++ (no CUDA headers),
// so the bindings compile with the host compiler.
//
// cudart is linked statically and opens the driver (libcuda.so.1) itself on
// the first call, so a CUDA build imports on a machine without a driver or
// GPU: cuda_status() says why no device can be used, and no call aborts.
// Every CUDA error becomes a CudaError (Python: RuntimeError) naming the
// error, the failing call and its source line.
#pragma once

#include <cstddef>
#include <functional>
#include <stdexcept>
#include <string>

namespace pyv4 {
namespace cuda {

struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Status {
  bool ok = false;
  std::string reason;  // why not ok; else the device name and compute capability
};

// Whether a CUDA device can be used (checked once, then cached).
const Status& status();
// CUDA devices this process sees (0 when none can be used).
int device_count();
// Throws CudaError with status().reason unless a device can be used, and
// unless device `index` exists.
void require_device(int index = 0);

// Makes device `index` current for the calling thread while it lives (CUDA's
// current device is per thread), then restores the previous one: every call
// into a GpuEngine and every allocation for it runs inside one.
class DeviceScope {
 public:
  explicit DeviceScope(int index);
  ~DeviceScope();
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int prev_ = 0;
};

// Throws CudaError for a CUDA error code (`what`: the failing call).
[[noreturn]] void throw_error(int code, const char* what, const char* file, int line);
// Free and total device memory in bytes (cudaMemGetInfo; requires a device).
struct MemoryInfo {
  size_t free = 0, total = 0;
};
MemoryInfo memory_info(int index = 0);
// What the benchmarks need to state the card's nominal peaks (device 0).
struct DeviceInfo {
  std::string name;
  int cc_major = 0, cc_minor = 0, sm_count = 0, clock_khz = 0;  // clock: the SMs' peak
};
DeviceInfo device_info(int index = 0);
// Waits for the device and reports any error of the work before.
void synchronize();
// Device seconds per call of f (which launches work on the default stream),
// timed with events over `reps` calls after one warm-up call.
double seconds_per_call(const std::function<void()>& f, int reps);

}  // namespace cuda
}  // namespace pyv4

#ifdef __CUDACC__
#define PYV4_CUDA_CHECK_AS(expr, what)                                                     \
  do {                                                                                     \
    const cudaError_t pyv4_err_ = (expr);                                                  \
    if (pyv4_err_ != cudaSuccess)                                                          \
      ::pyv4::cuda::throw_error(static_cast<int>(pyv4_err_), what, __FILE__, __LINE__);    \
  } while (0)
#define PYV4_CUDA_CHECK(expr) PYV4_CUDA_CHECK_AS(expr, #expr)
// After a kernel launch: configuration errors are reported at once, faults
// of the kernel by the next synchronizing call.
#define PYV4_CUDA_LAUNCHED(kernel) PYV4_CUDA_CHECK_AS(cudaGetLastError(), "launch of " #kernel)
#endif
