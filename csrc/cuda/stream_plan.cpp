// Groups of streamed host experts (contract in cuda/stream_plan.h).
#include "cuda/stream_plan.h"

#include <algorithm>
#include <stdexcept>

namespace pyv4 {
namespace cuda {

std::vector<StreamGroup> plan_stream_groups(const std::vector<int32_t>& expert, size_t per_expert,
                                            size_t group_bytes) {
  if (per_expert == 0) throw std::logic_error("plan_stream_groups: an expert of 0 bytes");
  const size_t cap = std::max<size_t>(1, group_bytes / per_expert);  // experts per group
  const int64_t np = static_cast<int64_t>(expert.size());
  std::vector<StreamGroup> groups;
  for (int64_t p = 0; p < np; ++p) {
    const bool new_expert = p == 0 || expert[p] != expert[p - 1];
    if (p > 0 && expert[p] < expert[p - 1]) throw std::logic_error("plan_stream_groups: pairs not sorted by expert");
    if (groups.empty() || (new_expert && groups.back().ids.size() == cap)) {
      groups.emplace_back();
      groups.back().p0 = p;
    }
    StreamGroup& g = groups.back();
    if (new_expert) g.ids.push_back(expert[p]);
    g.local.push_back(static_cast<int32_t>(g.ids.size() - 1));
    g.p1 = p + 1;
  }
  return groups;
}

bool stream_pays(size_t bytes, int64_t n_pairs, double macs_per_pair, const StreamCosts& c) {
  if (!(c.cpu_bytes_per_s > 0 && c.cpu_macs_per_s > 0 && c.pcie_bytes_per_s > 0)) return false;
  const double b = static_cast<double>(bytes);
  const double cpu = std::max(b / c.cpu_bytes_per_s, static_cast<double>(n_pairs) * macs_per_pair / c.cpu_macs_per_s);
  return b / c.pcie_bytes_per_s < cpu;
}

}  // namespace cuda
}  // namespace pyv4
