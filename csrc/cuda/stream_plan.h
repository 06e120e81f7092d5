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

// The rates behind the choice, per chunk and layer, between computing the
// host's routed experts on the CPU and streaming them to the GPU (issue #14:
// a cost model decides), measured on this machine when a model is loaded on
// a GPU (pyv4/model.py).
struct StreamCosts {
  double cpu_bytes_per_s = 0;   // the CPU pool's read bandwidth
  double cpu_macs_per_s = 0;    // its int8 multiply-accumulate rate
  double pcie_bytes_per_s = 0;  // pinned host -> device copies
};

// Whether streaming the used host experts (bytes in all) for n_pairs (token,
// expert) products of macs_per_pair multiply-accumulates each is faster than
// computing them on the CPU. The CPU reads the same bytes once and runs the
// products: max(bytes / its bandwidth, n_pairs * macs_per_pair / its rate);
// streaming costs bytes / PCIe bandwidth (the GPU's products of a group run
// while the next group is copied; the activations are KBs). Decode (a few
// pairs) stays on the CPU, a long prefill chunk streams; where the two meet
// depends on the machine: for V4-Flash's MXFP4 experts beside PCIe 4.0 (25
// GB/s, ~3.4 GB of a layer's experts in ~137 ms) a CPU doing 1 T int8 MAC/s
// keeps chunks up to ~900 tokens, one doing 0.1 T streams from ~80. A rate of
// 0: never.
bool stream_pays(size_t bytes, int64_t n_pairs, double macs_per_pair, const StreamCosts& c);

}  // namespace cuda
}  // namespace pyv4
