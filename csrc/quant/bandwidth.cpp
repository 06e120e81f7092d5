#include "quant/bandwidth.h"

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "quant/cpu_features.h"
#include "quant/kernels.h"

namespace pyv4 {

namespace {
uint64_t read_sum_scalar(const uint8_t* p, size_t bytes) {
  uint64_t s0 = 0, s1 = 0;
  size_t i = 0;
  for (; i + 16 <= bytes; i += 16) {
    uint64_t a, b;
    std::memcpy(&a, p + i, 8);
    std::memcpy(&b, p + i + 8, 8);
    s0 += a;
    s1 += b;
  }
  for (; i < bytes; ++i) s0 += p[i];
  return s0 + s1;
}
}  // namespace

double read_bandwidth_gbs(size_t bytes, int reps, ThreadPool& pool) {
  bytes = (bytes + 4095) & ~size_t(4095);
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint8_t, Free> buf(static_cast<uint8_t*>(std::aligned_alloc(4096, bytes)));
  const uint8_t* p = buf.get();
  const bool avx2 = isa_supported(Isa::AVX2);
  volatile uint64_t sink = 0;
  const int64_t pages = static_cast<int64_t>(bytes / 4096);
  // First touch from the threads that will read (NUMA-friendly), then warm up.
  pool.parallel_for(pages, 1, [&](int64_t a, int64_t b, int) {
    std::memset(buf.get() + a * 4096, static_cast<int>(a & 0xff), static_cast<size_t>(b - a) * 4096);
  });
  auto pass = [&] {
    pool.parallel_for(pages, 16, [&](int64_t a, int64_t b, int) {
      const size_t n = static_cast<size_t>(b - a) * 4096;
      const uint64_t s = avx2 ? qk::read_sum_avx2(p + a * 4096, n) : read_sum_scalar(p + a * 4096, n);
      sink = sink + s;
    });
  };
  pass();
  const auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; ++r) pass();
  const double sec =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return static_cast<double>(bytes) * reps / sec / 1e9;
}

double int8_peak_gops(double seconds, ThreadPool& pool) {
  if (!isa_supported(Isa::AVX512)) return 0.0;
  constexpr int64_t kIters = 1 << 20;  // per call: 12 * 64 * 2 ops per iteration
  volatile uint64_t sink = 0;
  const int n = pool.size();
  auto spin = [&](int64_t a, int64_t b, int) {  // one unit per thread
    for (int64_t u = a; u < b; ++u) sink = sink + qk::vnni_spin_avx512(kIters);
  };
  pool.parallel_for(n, 1, spin);  // warm-up (clocks ramp)
  int64_t calls = 0;
  const auto t0 = std::chrono::steady_clock::now();
  double sec = 0.0;
  do {
    pool.parallel_for(n, 1, spin);
    ++calls;
    sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  } while (sec < seconds);
  return static_cast<double>(calls) * n * kIters * 12 * 64 * 2 / sec / 1e9;
}

}  // namespace pyv4
