// Run-time CPU feature detection and the global kernel switches.
//
// The wheel is compiled for the x86-64 baseline; the AVX2 and AVX-512 kernels
// live in *_avx2.cpp / *_avx512.cpp and are only called after CPUID (and the OS
// XSAVE state check) says the CPU and OS support them.
//
// Switches (each also settable from the environment, read once at first use):
//   PYV4_ISA=scalar|avx2|avx512|auto   which kernel family matmul uses
//   PYV4_COMPUTE=reference|fast        Reference: weights dequantized to fp32 by
//                                       the scalar oracle, activations not
//                                       quantized; Fast: the SIMD kernels.
#pragma once

#include <string>

namespace pyv4 {

struct CpuFeatures {
  bool sse2 = false, avx = false, avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512vnni = false, avx512bf16 = false, avx512vbmi = false, gfni = false;
  bool avx512bitalg = false;
  bool os_avx = false;     // OS saves YMM state (XCR0 bits 1,2)
  bool os_avx512 = false;  // OS saves ZMM/opmask state (XCR0 bits 5,6,7)
};

const CpuFeatures& cpu_features();

enum class Isa { Scalar = 0, AVX2 = 1, AVX512 = 2 };

// Best ISA this CPU + OS supports (AVX2 needs AVX2+FMA+F16C; AVX512 needs
// F/BW/VL/DQ/VNNI as well).
Isa best_isa();
bool isa_supported(Isa isa);
const char* isa_name(Isa isa);
// Parses "scalar" | "avx2" | "avx512" | "auto"; throws InputError otherwise.
Isa parse_isa(const std::string& s, bool* is_auto = nullptr);

// The ISA matmul dispatches to (initially PYV4_ISA or best_isa()).
Isa active_isa();
// Forces an ISA; throws InputError if the CPU lacks it. "auto" = best_isa().
void set_isa(Isa isa);
void set_isa(const std::string& name);

// The AVX-512 kernels that need more than the AVX-512 set (VBMI, GFNI, BITALG)
// run where the CPU has those features and this switch is on (the default);
// off, the AVX-512-set kernels run, as on a CPU without them (so tests reach
// both on one machine).
bool avx512_extensions();
void set_avx512_extensions(bool on);

enum class ComputeMode { Reference = 0, Fast = 1 };
ComputeMode compute_mode();  // initially PYV4_COMPUTE or Fast
void set_compute_mode(ComputeMode m);
void set_compute_mode(const std::string& name);  // "reference" | "fast"
const char* compute_mode_name(ComputeMode m);

}  // namespace pyv4
