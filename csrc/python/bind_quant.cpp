// Kernel-level bindings (used by tests and bench/kernels.py).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "python/bindings.h"
#include "quant/matmul.h"

namespace py = pybind11;

namespace pyv4 {

void bind_quant(py::module_& m) {
  (void)m;
}

}  // namespace pyv4
