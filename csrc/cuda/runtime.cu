#include "cuda/runtime.h"

#include <cuda_runtime.h>
#include <dlfcn.h>

#include <cstring>

namespace pyv4 {
namespace cuda {

namespace {

// cudart reports a missing driver as "insufficient driver"; tell the two
// apart by looking for the library it would have loaded.
bool driver_library_present() {
  void* h = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
  if (!h) return false;
  dlclose(h);
  return true;
}

Status probe() {
  Status s;
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  cudaGetLastError();  // clear it: later calls must not see this probe's error
  if (e == cudaErrorInsufficientDriver && !driver_library_present()) {
    s.reason = "no CUDA driver found (libcuda.so.1)";
  } else if (e == cudaErrorNoDevice || (e == cudaSuccess && n == 0)) {
    s.reason = "no CUDA device";
  } else if (e != cudaSuccess) {
    s.reason = std::string("CUDA unavailable: ") + cudaGetErrorName(e) + ": " + cudaGetErrorString(e);
  } else {
    cudaDeviceProp p;
    const cudaError_t pe = cudaGetDeviceProperties(&p, 0);
    if (pe != cudaSuccess) {
      s.reason = std::string("CUDA device 0 unusable: ") + cudaGetErrorString(pe);
    } else {
      s.ok = true;
      s.reason = std::string(p.name) + " (sm_" + std::to_string(p.major) + std::to_string(p.minor) + ")";
    }
  }
  return s;
}

}  // namespace

const Status& status() {
  static const Status s = probe();
  return s;
}

int device_count() {
  if (!status().ok) return 0;
  int n = 0;
  PYV4_CUDA_CHECK(cudaGetDeviceCount(&n));
  return n;
}

void require_device(int index) {
  if (!status().ok) throw CudaError(status().reason);
  const int n = device_count();
  if (index < 0 || index >= n)
    throw CudaError("no CUDA device " + std::to_string(index) + " (this machine has " + std::to_string(n) + ")");
}

DeviceScope::DeviceScope(int index) {
  require_device(index);
  PYV4_CUDA_CHECK(cudaGetDevice(&prev_));
  PYV4_CUDA_CHECK(cudaSetDevice(index));
}

DeviceScope::~DeviceScope() { cudaSetDevice(prev_); }

void throw_error(int code, const char* what, const char* file, int line) {
  const auto e = static_cast<cudaError_t>(code);
  // Reset the thread's last error: otherwise the next launch check
  // (cudaGetLastError) would report this one again (a sticky error, a lost
  // context, stays anyway).
  cudaGetLastError();
  const char* base = std::strrchr(file, '/');
  throw CudaError(std::string("CUDA error ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) +
                  ") in " + what + " at " + (base ? base + 1 : file) + ":" + std::to_string(line));
}

void synchronize() { PYV4_CUDA_CHECK(cudaDeviceSynchronize()); }

DeviceInfo device_info(int index) {
  require_device(index);
  DeviceInfo d;
  cudaDeviceProp p;
  PYV4_CUDA_CHECK(cudaGetDeviceProperties(&p, index));
  d.name = p.name;
  d.cc_major = p.major;
  d.cc_minor = p.minor;
  d.sm_count = p.multiProcessorCount;
  PYV4_CUDA_CHECK(cudaDeviceGetAttribute(&d.clock_khz, cudaDevAttrClockRate, index));
  return d;
}

MemoryInfo memory_info(int index) {
  const DeviceScope on(index);
  MemoryInfo m;
  PYV4_CUDA_CHECK(cudaMemGetInfo(&m.free, &m.total));
  return m;
}

double seconds_per_call(const std::function<void()>& f, int reps) {
  f();
  synchronize();
  cudaEvent_t start, stop;
  PYV4_CUDA_CHECK(cudaEventCreate(&start));
  if (const cudaError_t e = cudaEventCreate(&stop); e != cudaSuccess) {
    cudaEventDestroy(start);
    throw_error(static_cast<int>(e), "cudaEventCreate(&stop)", __FILE__, __LINE__);
  }
  float ms = 0.0f;
  cudaError_t e = cudaEventRecord(start);
  if (e == cudaSuccess) {
    try {
      for (int r = 0; r < reps; ++r) f();
    } catch (...) {
      cudaEventDestroy(start);
      cudaEventDestroy(stop);
      throw;
    }
    e = cudaEventRecord(stop);
  }
  if (e == cudaSuccess) e = cudaEventSynchronize(stop);
  if (e == cudaSuccess) e = cudaEventElapsedTime(&ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  if (e != cudaSuccess) throw_error(static_cast<int>(e), "timing events", __FILE__, __LINE__);
  return ms * 1e-3 / (reps > 0 ? reps : 1);
}

}  // namespace cuda
}  // namespace pyv4
