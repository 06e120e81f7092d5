// Host-side index math of the GPU's KV (contract in cuda/kv_rows.h).
#include "cuda/kv_rows.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>

#include "common/error.h"

namespace pyv4 {
namespace cuda {

MirrorBook::MirrorBook(std::vector<AttnKind> kinds, int64_t csa_budget)
    : kinds_(std::move(kinds)), csa_budget_(csa_budget) {
  if (csa_budget < -1) throw InputError("csa_rows_gpu must be >= 0 or -1 (all), got " + std::to_string(csa_budget));
  clear();
}

void MirrorBook::clear() {
  stamp_ = 0;
  comp_held_.assign(kinds_.size(), 0);
  index_held_.assign(kinds_.size(), 0);
}

int64_t MirrorBook::comp_limit(int64_t il) const {
  return kinds_.at(il) == AttnKind::CSA ? csa_budget_ : -1;
}

namespace {

RowRange take(int64_t& held, int64_t host_n, int64_t limit, const char* what) {
  if (host_n < held)
    throw std::logic_error(std::string("GPU KV copy: ") + what + " shrank without a new stamp");
  const int64_t end = limit < 0 ? host_n : std::max(held, std::min(host_n, limit));
  const RowRange r{held, end};
  held = end;
  return r;
}

}  // namespace

RowRange MirrorBook::comp_to_copy(int64_t il, int64_t host_n) {
  if (kinds_.at(il) == AttnKind::Sliding) return {};
  return take(comp_held_[il], host_n, comp_limit(il), "compressed rows");
}

RowRange MirrorBook::index_to_copy(int64_t il, int64_t host_n) {
  if (kinds_.at(il) != AttnKind::CSA) return {};
  return take(index_held_[il], host_n, -1, "indexer keys");
}

int64_t grow_rows(int64_t have, int64_t need, int64_t limit) {
  if (need <= have) return have;
  int64_t rows = std::max<int64_t>({need, 2 * have, 64});
  if (limit >= 0) rows = std::max(need, std::min(rows, limit));
  return rows;
}

std::vector<RingRun> ring_runs(int64_t pos0, int64_t n, int64_t window) {
  std::vector<RingRun> runs;
  for (int64_t t = std::max<int64_t>(0, n - window); t < n;) {
    const int64_t slot = (pos0 + t) % window, len = std::min(n - t, window - slot);
    runs.push_back({t, slot, len});
    t += len;
  }
  return runs;
}

AttnRows plan_attn_rows(int64_t pos0, int64_t n, int64_t window, AttnKind kind, int64_t ratio,
                        const std::vector<std::vector<int64_t>>& picked, int64_t comp_on_device) {
  if (kind == AttnKind::CSA && static_cast<int64_t>(picked.size()) != n)
    throw std::logic_error("plan_attn_rows: one top-k per query expected");
  AttnRows a;
  // The stored window rows [w_first, pos0) (ring slot p mod window), then the span's own rows.
  const int64_t w_first = std::max<int64_t>(0, pos0 - window + 1);
  for (int64_t p = w_first; p < pos0; ++p) a.rows.push_back({RowSource::Ring, p % window});
  a.window_read = pos0 - w_first;
  for (int64_t t = 0; t < n; ++t) a.rows.push_back({RowSource::Chunk, t});
  // The compressed rows any query reads, in row order, each once.
  std::vector<int32_t> comp_row;  // compressed row b -> its row in a.rows (-1: not read)
  if (kind != AttnKind::Sliding) {
    const int64_t nb_last = (pos0 + n) / ratio;
    comp_row.assign(nb_last, -1);
    std::vector<char> need(nb_last, kind == AttnKind::HCA ? 1 : 0);
    if (kind == AttnKind::CSA)
      for (const auto& sel : picked)
        for (int64_t b : sel) {
          if (b < 0 || b >= nb_last) throw std::logic_error("plan_attn_rows: selected row out of range");
          need[b] = 1;
        }
    for (int64_t b = 0; b < nb_last; ++b) {
      if (!need[b]) continue;
      comp_row[b] = static_cast<int32_t>(a.rows.size());
      a.rows.push_back({b < comp_on_device ? RowSource::Device : RowSource::Host, b});
      ++a.comp_read;
    }
  }
  // Per query: its window positions in order (its own row last), then its compressed rows.
  const int64_t own0 = pos0 - w_first;  // row of the span's first own row
  a.first.assign(n + 1, 0);
  for (int64_t t = 0; t < n; ++t) {
    const int64_t P = pos0 + t;
    for (int64_t j = std::max<int64_t>(0, P - window + 1); j <= P; ++j)
      a.idx.push_back(static_cast<int32_t>(j >= pos0 ? own0 + (j - pos0) : j - w_first));
    if (kind == AttnKind::HCA) {
      for (int64_t b = 0; b < (P + 1) / ratio; ++b) a.idx.push_back(comp_row[b]);
    } else if (kind == AttnKind::CSA) {
      for (int64_t b : picked[t]) a.idx.push_back(comp_row[b]);
    }
    a.first[t + 1] = static_cast<int64_t>(a.idx.size());
  }
  return a;
}

}  // namespace cuda
}  // namespace pyv4
