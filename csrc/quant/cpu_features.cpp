#include "quant/cpu_features.h"

#include <atomic>
#include <cstdint>
#include <cstdlib>

#include "common/error.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define PYV4_X86 1
#endif

namespace pyv4 {

namespace {

#ifdef PYV4_X86
uint64_t read_xcr0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}
#endif

CpuFeatures detect() {
  CpuFeatures f;
#ifdef PYV4_X86
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  f.sse2 = d & (1u << 26);
  const bool osxsave = c & (1u << 27);
  f.avx = c & (1u << 28);
  f.fma = c & (1u << 12);
  f.f16c = c & (1u << 29);
  if (osxsave) {
    const uint64_t xcr0 = read_xcr0();
    f.os_avx = (xcr0 & 0x6) == 0x6;
    f.os_avx512 = f.os_avx && (xcr0 & 0xe0) == 0xe0;
  }
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    f.avx2 = b & (1u << 5);
    f.avx512f = b & (1u << 16);
    f.avx512dq = b & (1u << 17);
    f.avx512bw = b & (1u << 30);
    f.avx512vl = b & (1u << 31);
    f.avx512vbmi = c & (1u << 1);
    f.gfni = c & (1u << 8);
    f.avx512bitalg = c & (1u << 12);
    f.avx512vnni = c & (1u << 11);
  }
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) f.avx512bf16 = a & (1u << 5);
#endif
  return f;
}

Isa isa_from_env() {
  const char* e = std::getenv("PYV4_ISA");
  if (e && *e) {
    bool is_auto = false;
    try {
      Isa isa = parse_isa(e, &is_auto);
      if (!is_auto && isa_supported(isa)) return isa;
    } catch (const InputError&) {
    }
  }
  return best_isa();
}

ComputeMode mode_from_env() {
  const char* e = std::getenv("PYV4_COMPUTE");
  if (e && std::string(e) == "reference") return ComputeMode::Reference;
  return ComputeMode::Fast;
}

std::atomic<int>& isa_slot() {
  static std::atomic<int> v{static_cast<int>(isa_from_env())};
  return v;
}

std::atomic<int>& mode_slot() {
  static std::atomic<int> v{static_cast<int>(mode_from_env())};
  return v;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

bool isa_supported(Isa isa) {
  const CpuFeatures& f = cpu_features();
  switch (isa) {
    case Isa::Scalar:
      return true;
    case Isa::AVX2:
      return f.os_avx && f.avx && f.avx2 && f.fma && f.f16c;
    case Isa::AVX512:
      return isa_supported(Isa::AVX2) && f.os_avx512 && f.avx512f && f.avx512bw &&
             f.avx512vl && f.avx512dq && f.avx512vnni;
  }
  return false;
}

Isa best_isa() {
  if (isa_supported(Isa::AVX512)) return Isa::AVX512;
  if (isa_supported(Isa::AVX2)) return Isa::AVX2;
  return Isa::Scalar;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar:
      return "scalar";
    case Isa::AVX2:
      return "avx2";
    case Isa::AVX512:
      return "avx512";
  }
  return "?";
}

Isa parse_isa(const std::string& s, bool* is_auto) {
  if (is_auto) *is_auto = false;
  if (s == "scalar") return Isa::Scalar;
  if (s == "avx2") return Isa::AVX2;
  if (s == "avx512") return Isa::AVX512;
  if (s == "auto") {
    if (is_auto) *is_auto = true;
    return best_isa();
  }
  throw InputError("unknown ISA '" + s + "' (expected scalar, avx2, avx512 or auto)");
}

Isa active_isa() { return static_cast<Isa>(isa_slot().load(std::memory_order_relaxed)); }

void set_isa(Isa isa) {
  if (!isa_supported(isa))
    throw InputError(std::string("this CPU/OS does not support the ") + isa_name(isa) +
                     " kernels");
  isa_slot().store(static_cast<int>(isa), std::memory_order_relaxed);
}

void set_isa(const std::string& name) { set_isa(parse_isa(name)); }

namespace {
std::atomic<bool>& extensions_slot() {
  static std::atomic<bool> on{true};
  return on;
}
}  // namespace

bool avx512_extensions() { return extensions_slot().load(std::memory_order_relaxed); }
void set_avx512_extensions(bool on) { extensions_slot().store(on, std::memory_order_relaxed); }

ComputeMode compute_mode() {
  return static_cast<ComputeMode>(mode_slot().load(std::memory_order_relaxed));
}

void set_compute_mode(ComputeMode m) {
  mode_slot().store(static_cast<int>(m), std::memory_order_relaxed);
}

void set_compute_mode(const std::string& name) {
  if (name == "reference")
    set_compute_mode(ComputeMode::Reference);
  else if (name == "fast")
    set_compute_mode(ComputeMode::Fast);
  else
    throw InputError("unknown compute mode '" + name + "' (expected reference or fast)");
}

const char* compute_mode_name(ComputeMode m) {
  return m == ComputeMode::Reference ? "reference" : "fast";
}

}  // namespace pyv4
