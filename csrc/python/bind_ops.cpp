// The small fp32 ops of the forward pass (csrc/model/ops.h), bound one by one:
// the CPU references tests/test_cuda_ops.py checks the GPU's ops against.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <string>
#include <vector>

#include "common/error.h"
#include "model/attention.h"
#include "model/ops.h"
#include "python/bindings.h"

namespace py = pybind11;

namespace pyv4 {

void bind_ops(py::module_& m) {
  m.def(
      "ops_rms_norm",
      [](const F32Array& x, py::object w, float eps) {
        if (x.ndim() != 2) throw InputError("ops_rms_norm: x must be float32 [n, dim]");
        const int64_t n = x.shape(0), dim = x.shape(1);
        F32Array wa;
        if (!w.is_none()) {
          wa = w.cast<F32Array>();
          if (wa.ndim() != 1 || wa.shape(0) != dim) throw InputError("ops_rms_norm: w must be float32 [dim]");
        }
        py::array_t<float> y({n, dim});
        for (int64_t t = 0; t < n; ++t)
          rms_norm(x.data() + t * dim, w.is_none() ? nullptr : wa.data(), y.mutable_data() + t * dim, dim, eps);
        return y;
      },
      py::arg("x"), py::arg("w"), py::arg("eps"), "rms_norm of each row of x (w None: unweighted).");
  m.def(
      "ops_rope",
      [](const F32Array& v, const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& pos,
         const F32Array& inv_freq, bool inverse) {
        if (v.ndim() != 2 || pos.ndim() != 1 || pos.shape(0) != v.shape(0) || inv_freq.ndim() != 1 ||
            2 * inv_freq.shape(0) > v.shape(1))
          throw InputError("ops_rope: v [n, width], pos [n], inv_freq [half] with 2 * half <= width");
        RopeTable table;
        table.inv_freq.assign(inv_freq.data(), inv_freq.data() + inv_freq.shape(0));
        py::array_t<float> out({v.shape(0), v.shape(1)});
        std::copy(v.data(), v.data() + v.size(), out.mutable_data());
        for (int64_t t = 0; t < v.shape(0); ++t)
          table.apply(out.mutable_data() + t * v.shape(1), v.shape(1), pos.data()[t], inverse);
        return out;
      },
      py::arg("v"), py::arg("pos"), py::arg("inv_freq"), py::arg("inverse") = false,
      "RopeTable::apply with the given frequencies on each row of v (a copy), row t at pos[t].");
  m.def(
      "ops_swiglu",
      [](const F32Array& g, const F32Array& u, float limit) {
        if (g.ndim() != 1 || u.ndim() != 1 || g.shape(0) != u.shape(0))
          throw InputError("ops_swiglu: g and u float32 [n]");
        py::array_t<float> h(g.shape(0));
        swiglu(g.data(), u.data(), h.mutable_data(), g.shape(0), limit);
        return h;
      },
      py::arg("g"), py::arg("u"), py::arg("limit"), "The experts' clamped SwiGLU (limit 0: no clamp).");
  m.def(
      "ops_select_topk",
      [](const F32Array& scores, int64_t k) {
        if (scores.ndim() != 1 || k < 0) throw InputError("ops_select_topk: scores float32 [n], k >= 0");
        std::vector<int64_t> idx(static_cast<size_t>(std::min<int64_t>(k, scores.shape(0))));
        int64_t got = 0;
        select_topk(scores.data(), scores.shape(0), k, idx.data(), &got);
        return py::array_t<int64_t>(static_cast<py::ssize_t>(got), idx.data());
      },
      py::arg("scores"), py::arg("k"),
      "The indexer's top-k: the min(k, n) best scores' indices (ties to the lower index), in row order.");
}

}  // namespace pyv4
