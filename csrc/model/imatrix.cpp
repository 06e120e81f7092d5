#include "model/imatrix.h"

#include <algorithm>

namespace pyv4 {

ImatrixCollector::ImatrixCollector(ModelWeights& w) {
  add("output.weight", w.output, 1);
  add("output_hc_fn.weight", w.hc_head_fn, 1);
  for (size_t il = 0; il < w.layers.size(); ++il) {
    LayerWeights& L = w.layers[il];
    const auto mats = L.matrices();
    const int64_t E = L.gate_exps.rows && L.router.rows ? L.router.rows : 1;
    for (size_t k = 0; k < mats.size(); ++k) {
      const std::string suffix = LayerWeights::kMatrixNames[k];
      const bool experts = suffix.find("_exps.") != std::string::npos;
      add("blk." + std::to_string(il) + "." + suffix, *mats[k], experts ? E : 1);
    }
  }
  std::sort(ranges_.begin(), ranges_.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
}

void ImatrixCollector::add(const std::string& name, const WeightMatrix& m, int64_t n_mat) {
  if (!m.data || m.rows <= 0) return;  // absent (e.g. no compressor on a sliding layer)
  const size_t bytes = m.row_stride * static_cast<size_t>(m.rows);
  ranges_.push_back({m.data, m.data + bytes, bytes / static_cast<size_t>(n_mat), entries_.size()});
  Entry e;
  e.name = name;
  e.cols = m.cols;
  e.n_mat = n_mat;
  e.sum2.assign(static_cast<size_t>(n_mat * m.cols), 0.0);
  e.count.assign(static_cast<size_t>(n_mat), 0);
  entries_.push_back(std::move(e));
}

void ImatrixCollector::observe(const WeightMatrix& W, const float* X, int64_t ldx, int64_t n_tokens) {
  if (n_tokens <= 0 || W.rows <= 0) return;
  auto it = std::upper_bound(ranges_.begin(), ranges_.end(), W.data,
                             [](const uint8_t* p, const Range& r) { return p < r.begin; });
  if (it == ranges_.begin()) return;
  const Range& r = *--it;
  if (W.data >= r.end) return;  // a matrix outside the model's (not collected)
  Entry& e = entries_[r.entry];
  if (W.cols != e.cols) return;
  const int64_t mat = std::min<int64_t>(static_cast<int64_t>((W.data - r.begin) / r.mat_bytes), e.n_mat - 1);
  double* s = &e.sum2[static_cast<size_t>(mat * e.cols)];
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float* x = X + t * ldx;
    for (int64_t c = 0; c < e.cols; ++c) s[c] += static_cast<double>(x[c]) * x[c];
  }
  e.count[static_cast<size_t>(mat)] += n_tokens;
}

}  // namespace pyv4
