// Sampler bindings: pyv4.sampling wraps these.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common/error.h"
#include "python/bindings.h"
#include "sample/sampler.h"

namespace py = pybind11;

namespace pyv4 {

using IdArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using LogitArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

void bind_sample(py::module_& m) {
  py::class_<SamplingParams>(m, "SamplerParams")
      .def(py::init<>())
      .def_readwrite("temperature", &SamplingParams::temperature)
      .def_readwrite("top_k", &SamplingParams::top_k)
      .def_readwrite("top_p", &SamplingParams::top_p)
      .def_readwrite("min_p", &SamplingParams::min_p)
      .def_readwrite("repetition_penalty", &SamplingParams::repetition_penalty)
      .def_readwrite("presence_penalty", &SamplingParams::presence_penalty)
      .def_readwrite("frequency_penalty", &SamplingParams::frequency_penalty)
      .def_readwrite("penalty_last_n", &SamplingParams::penalty_last_n)
      .def_readwrite("seed", &SamplingParams::seed)
      .def("validate", &SamplingParams::validate);

  py::class_<Sampler>(m, "Sampler")
      .def(py::init<const SamplingParams&>())
      .def("probabilities",
           [](const Sampler& s, LogitArray logits, IdArray history) {
             if (logits.ndim() != 1) throw InputError("logits must be a 1-D array");
             auto p = s.probabilities(logits.data(), logits.size(), history.data(), history.size());
             return py::array_t<float>(static_cast<py::ssize_t>(p.size()), p.data());
           })
      .def("sample", [](Sampler& s, LogitArray logits, IdArray history) {
        if (logits.ndim() != 1) throw InputError("logits must be a 1-D array");
        return s.sample(logits.data(), logits.size(), history.data(), history.size());
      });
}

}  // namespace pyv4
