// pyv4._core: the compiled half of pyv4. Exceptions thrown by the core map to
// Python exceptions here, once, so no binding needs its own try/catch.
#include <pybind11/pybind11.h>

#include "common/error.h"
#include "python/bindings.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  m.doc() = "pyv4 C++ core";
  static py::exception<pyv4::FormatError> format_error(m, "FormatError", PyExc_ValueError);
  static py::exception<pyv4::ContextOverflowError> overflow_error(m, "ContextOverflowError",
                                                                  PyExc_ValueError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const pyv4::FormatError& e) {
      py::set_error(format_error, e.what());
    } catch (const pyv4::ContextOverflowError& e) {
      py::set_error(overflow_error, e.what());
    } catch (const pyv4::InputError& e) {
      py::set_error(PyExc_ValueError, e.what());
    }
  });
  pyv4::bind_gguf(m);
  pyv4::bind_quant(m);
  pyv4::bind_model(m);
  pyv4::bind_session(m);
  pyv4::bind_sample(m);
  pyv4::bind_ops(m);
  pyv4::bind_cuda(m);
  pyv4::bind_gpu_model(m);
}
