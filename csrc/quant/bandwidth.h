// The machine's limits, probed for the benchmarks (bench/kernels.py): memory
// read bandwidth (every pool thread streams its own slice of one buffer,
// summing it) and the int8 dot-product issue rate the GEMMs are bound by.
#pragma once

#include <cstddef>

#include "common/thread_pool.h"

namespace pyv4 {

// Reads a `bytes`-sized buffer `reps` times with all pool threads (after one
// untimed warm-up pass); returns GB/s (1e9 bytes per second).
double read_bandwidth_gbs(size_t bytes, int reps, ThreadPool& pool);

// Peak int8 multiply-adds x2 per second (Gops/s) of all pool threads running
// independent vpdpbusd zmm chains (the AVX-512 VNNI GEMM's inner instruction),
// about `seconds` long; 0 where the CPU lacks AVX-512 VNNI.
double int8_peak_gops(double seconds, ThreadPool& pool);

}  // namespace pyv4
