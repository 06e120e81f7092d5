// Memory read-bandwidth probe for the kernel benchmark (bench/kernels.py): every
// pool thread streams its own slice of one buffer, summing it.
#pragma once

#include <cstddef>

#include "common/thread_pool.h"

namespace pyv4 {

// Reads a `bytes`-sized buffer `reps` times with all pool threads (after one
// untimed warm-up pass); returns GB/s (1e9 bytes per second).
double read_bandwidth_gbs(size_t bytes, int reps, ThreadPool& pool);

}  // namespace pyv4
