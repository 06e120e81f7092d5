// The GPU path of a model (csrc/cuda/gpu_engine.h) for pyv4.Model(device="cuda"):
// `GpuEngine(engine, experts)` over a loaded Engine, its eval / truncate on
// the Engine's sessions, and the device memory it needs to know. Built only
// with CUDA (PYV4_HAS_CUDA); without it nothing is registered and
// pyv4/device.py says why no GPU can be used.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <tuple>
#include <vector>

#include "common/error.h"
#include "python/bindings.h"

#ifdef PYV4_HAS_CUDA
#include "cuda/gpu_engine.h"
#include "cuda/runtime.h"
#endif

namespace py = pybind11;

namespace pyv4 {

void bind_gpu_model(py::module_& m) {
#ifdef PYV4_HAS_CUDA
  m.def(
      "cuda_memory",
      [] {
        const cuda::MemoryInfo mi = cuda::memory_info();
        return py::make_tuple(mi.free, mi.total);
      },
      "(free, total) bytes of device memory (RuntimeError without a usable device).");
  py::class_<cuda::GpuEngine>(m, "GpuEngine", "The forward pass of a loaded Engine on the GPU")
      .def(py::init([](Engine& e, const std::vector<std::tuple<int64_t, int64_t, int64_t>>& experts,
                       size_t stream_bytes) {
             std::vector<cuda::ExpertRange> ranges;
             for (const auto& [layer, first, end] : experts) ranges.push_back({layer, first, end});
             py::gil_scoped_release release;
             return std::make_unique<cuda::GpuEngine>(e, ranges, stream_bytes);
           }),
           py::arg("engine"), py::arg("experts_on_gpu"), py::arg("stream_bytes") = cuda::GpuEngine::kStreamBytes,
           py::keep_alive<1, 2>(),
           "Uploads the engine's weights; experts_on_gpu: [(layer, first, end)] routed experts placed on the GPU "
           "(the others run on the CPU, or, in chunks of >= 32 tokens, are copied to the GPU in groups of at most "
           "stream_bytes).")
      .def_property_readonly("weight_bytes", &cuda::GpuEngine::weight_bytes)
      .def("experts_on_gpu", &cuda::GpuEngine::experts_on_gpu, py::arg("layer"))
      .def(
          "eval",
          [](cuda::GpuEngine& g, KVState& s, py::array_t<int64_t, py::array::c_style | py::array::forcecast> tokens,
             bool all_logits, int64_t n_vocab) {
            const int64_t n = tokens.size();
            std::vector<int64_t> ids(tokens.data(), tokens.data() + n);
            std::vector<float> logits;
            {
              py::gil_scoped_release release;
              logits = g.eval(s, ids.data(), n, all_logits);
            }
            py::array_t<float> out = all_logits ? py::array_t<float>({n, n_vocab}) : py::array_t<float>(n_vocab);
            if (static_cast<int64_t>(logits.size()) != out.size()) throw InputError("GpuEngine.eval: n_vocab mismatch");
            std::copy(logits.begin(), logits.end(), out.mutable_data());
            return out;
          },
          py::arg("state"), py::arg("tokens"), py::arg("all_logits"), py::arg("n_vocab"))
      .def(
          "truncate", [](cuda::GpuEngine& g, KVState& s, int64_t n) { g.truncate(s, n); }, py::arg("state"),
          py::arg("n_tokens"), py::call_guard<py::gil_scoped_release>());
#else
  (void)m;
#endif
}

}  // namespace pyv4
