// Each concern registers its own Python bindings into pyv4._core.
#pragma once

#include <pybind11/pybind11.h>

namespace pyv4 {
void bind_gguf(pybind11::module_& m);
void bind_model(pybind11::module_& m);
void bind_quant(pybind11::module_& m);
void bind_session(pybind11::module_& m);  // after bind_model (uses Engine)
void bind_sample(pybind11::module_& m);
}  // namespace pyv4
