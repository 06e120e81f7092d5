// Importance-matrix collection (issue #16: `pyv4 imatrix`): per weight matrix
// and input column, the sum of x^2 over the tokens that went through it, and
// the token count, per expert for the stacked routed-expert tensors (only the
// tokens routed to each). The low-bit quantizers weigh each column's error by
// sum / count (convert/imatrix.py reads the file this feeds).
//
// Where it hooks in: matmul() and matmul_many() report every product to an
// observer (quant/matmul.h), and the mHC mixes (matmul_serial pieces inside a
// parallel region) report theirs through observe_matmul, so the forward pass
// is unchanged. A product's matrix is found by its data pointer: a routed
// expert is a row_slice of its stacked tensor (moe.cpp), a wo_a group a
// row_slice of wo_a. llama-quantize refuses a very-low-bit type for any
// matrix the file has no entry for, the mHC ones included.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/weights.h"

namespace pyv4 {

class ImatrixCollector : public MatmulObserver {
 public:
  struct Entry {
    std::string name;          // GGUF tensor name
    int64_t cols = 0, n_mat = 1;
    std::vector<double> sum2;  // [n_mat][cols]
    std::vector<int64_t> count;  // [n_mat]
  };

  // Every matrix of the model that a product can read, by name.
  explicit ImatrixCollector(ModelWeights& w);

  // Called for each product Y = X W^T over n_tokens rows of X.
  void observe(const WeightMatrix& W, const float* X, int64_t ldx, int64_t n_tokens) override;

  const std::vector<Entry>& entries() const { return entries_; }

 private:
  struct Range {
    const uint8_t *begin, *end;
    size_t mat_bytes;  // bytes of one expert's rows (n_mat > 1)
    size_t entry;
  };
  void add(const std::string& name, const WeightMatrix& m, int64_t n_mat);
  std::vector<Range> ranges_;  // sorted by begin
  std::vector<Entry> entries_;
};

}  // namespace pyv4
