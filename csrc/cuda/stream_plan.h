// Which host experts go to the GPU together when a large chunk streams a
// layer's host experts there (csrc/cuda/gpu_engine.cu, issue #14 part 3).
// Plain C++ compiled into every build (tested by tests/test_cuda_host.py).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace pyv4 {
namespace cuda {

// Pairs [p0, p1) use the experts ids (distinct, ascending); a pair's expert
// is ids[local[p - p0]].
struct StreamGroup {
  int64_t p0 = 0, p1 = 0;
  std::vector<int32_t> ids, local;
};

// The pairs (token, expert), sorted by expert, cut into groups of at most
// max(1, group_bytes / per_expert) distinct experts, in order. Two groups are
// in flight at once (one copied while the other computes), so a caller with
// a budget of B bytes passes group_bytes = B / 2.
std::vector<StreamGroup> plan_stream_groups(const std::vector<int32_t>& expert, size_t per_expert,
                                            size_t group_bytes);

}  // namespace cuda
}  // namespace pyv4
