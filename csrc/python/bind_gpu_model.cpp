// The GPU path of a model (csrc/cuda/gpu_engine.h) for pyv4.Model(device="cuda"):
// `GpuEngine(engine, experts)` over a loaded Engine, its eval / truncate on
// the Engine's sessions, and the device memory it needs to know. Built only
// with CUDA (PYV4_HAS_CUDA); without it only the host-side index math of the
// GPU's KV and expert streaming (csrc/cuda/kv_rows.h, stream_plan.h, always
// built, tested by tests/test_cuda_host.py) is registered and pyv4/device.py
// says why no GPU can be used.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <tuple>
#include <vector>

#include "common/error.h"
#include "cuda/kv_rows.h"
#include "cuda/stream_plan.h"
#include "python/bindings.h"

#ifdef PYV4_HAS_CUDA
#include "cuda/gpu_engine.h"
#include "cuda/runtime.h"
#endif

namespace py = pybind11;

namespace pyv4 {

namespace {

AttnKind parse_kind(const std::string& k) {
  if (k == "sliding") return AttnKind::Sliding;
  if (k == "csa") return AttnKind::CSA;
  if (k == "hca") return AttnKind::HCA;
  throw InputError("attention kind must be 'sliding', 'csa' or 'hca', got '" + k + "'");
}

void bind_host(py::module_& m) {
  m.def(
      "cuda_attn_rows",
      [](int64_t pos0, int64_t n, int64_t window, const std::string& kind, int64_t ratio,
         const std::vector<std::vector<int64_t>>& picked, int64_t comp_on_device) {
        const AttnKind k = parse_kind(kind);
        if (pos0 < 0 || n < 1 || window < 1 || (k != AttnKind::Sliding && ratio < 1))
          throw InputError("cuda_attn_rows: pos0 >= 0, n >= 1, window >= 1 and ratio >= 1 expected");
        const cuda::AttnRows a = cuda::plan_attn_rows(pos0, n, window, k, ratio, picked, comp_on_device);
        static const char* names[] = {"ring", "chunk", "device", "host"};
        py::list rows;
        for (const cuda::RowRef& r : a.rows) rows.append(py::make_tuple(names[static_cast<int>(r.src)], r.index));
        py::dict d;
        d["rows"] = rows;
        d["idx"] = a.idx;
        d["first"] = a.first;
        d["window_read"] = a.window_read;
        d["comp_read"] = a.comp_read;
        return d;
      },
      py::arg("pos0"), py::arg("n"), py::arg("window"), py::arg("kind"), py::arg("ratio"), py::arg("picked"),
      py::arg("comp_on_device"),
      "The rows a span's queries read on the GPU path (cuda::plan_attn_rows): rows [(source, index)], idx and "
      "first (query t reads rows[idx[first[t]:first[t+1]]]), window_read, comp_read.");
  m.def("cuda_grow_rows", &cuda::grow_rows, py::arg("have"), py::arg("need"), py::arg("limit"));
  m.def(
      "cuda_ring_runs",
      [](int64_t pos0, int64_t n, int64_t window) {
        if (pos0 < 0 || n < 0 || window < 1) throw InputError("cuda_ring_runs: pos0 >= 0, n >= 0, window >= 1");
        py::list out;
        for (const cuda::RingRun& r : cuda::ring_runs(pos0, n, window)) out.append(py::make_tuple(r.t, r.slot, r.len));
        return out;
      },
      py::arg("pos0"), py::arg("n"), py::arg("window"),
      "Where a span's new rows enter the window ring (cuda::ring_runs): [(t, slot, len)].");
  m.def(
      "cuda_stream_groups",
      [](const std::vector<int32_t>& expert, size_t per_expert, size_t group_bytes) {
        if (per_expert == 0) throw InputError("cuda_stream_groups: per_expert must be positive");
        for (size_t i = 1; i < expert.size(); ++i)
          if (expert[i] < expert[i - 1]) throw InputError("cuda_stream_groups: experts must be sorted");
        py::list out;
        for (const cuda::StreamGroup& g : cuda::plan_stream_groups(expert, per_expert, group_bytes))
          out.append(py::make_tuple(g.p0, g.p1, g.ids, g.local));
        return out;
      },
      py::arg("expert"), py::arg("per_expert"), py::arg("group_bytes"),
      "Groups of streamed host experts (cuda::plan_stream_groups): [(p0, p1, ids, local)].");
  m.def(
      "cuda_stream_pays",
      [](size_t bytes, int64_t n_pairs, double macs_per_pair, double cpu_gbs, double cpu_gmacs, double pcie_gbs) {
        return cuda::stream_pays(bytes, n_pairs, macs_per_pair,
                                 cuda::StreamCosts{cpu_gbs * 1e9, cpu_gmacs * 1e9, pcie_gbs * 1e9});
      },
      py::arg("bytes"), py::arg("n_pairs"), py::arg("macs_per_pair"), py::arg("cpu_gbs"), py::arg("cpu_gmacs"),
      py::arg("pcie_gbs"),
      "Whether a chunk streams its host experts to the GPU (cuda::stream_pays; rates in G/s).");
  py::class_<cuda::MirrorBook>(m, "CudaMirrorBook", "What the GPU's copy of a session's rows holds (cuda::MirrorBook)")
      .def(py::init([](const std::vector<std::string>& kinds, int64_t csa_budget) {
             std::vector<AttnKind> k;
             for (const std::string& s : kinds) k.push_back(parse_kind(s));
             return cuda::MirrorBook(k, csa_budget);
           }),
           py::arg("kinds"), py::arg("csa_budget"))
      .def("current", &cuda::MirrorBook::current, py::arg("stamp"))
      .def("clear", &cuda::MirrorBook::clear)
      .def("invalidate", &cuda::MirrorBook::invalidate)
      .def("mark", &cuda::MirrorBook::mark, py::arg("stamp"))
      .def("comp_to_copy", [](cuda::MirrorBook& b, int64_t il, int64_t n) {
        const cuda::RowRange r = b.comp_to_copy(il, n);
        return py::make_tuple(r.first, r.end);
      })
      .def("index_to_copy", [](cuda::MirrorBook& b, int64_t il, int64_t n) {
        const cuda::RowRange r = b.index_to_copy(il, n);
        return py::make_tuple(r.first, r.end);
      })
      .def("comp_held", &cuda::MirrorBook::comp_held)
      .def("index_held", &cuda::MirrorBook::index_held)
      .def("comp_limit", &cuda::MirrorBook::comp_limit);
}

}  // namespace

void bind_gpu_model(py::module_& m) {
  bind_host(m);
#ifdef PYV4_HAS_CUDA
  m.def(
      "cuda_memory",
      [](int device) {
        const cuda::MemoryInfo mi = cuda::memory_info(device);
        return py::make_tuple(mi.free, mi.total);
      },
      py::arg("device") = 0, "(free, total) bytes of a device's memory (RuntimeError without that device).");
  py::class_<cuda::GpuEngine>(m, "GpuEngine", "The forward pass of a loaded Engine on the GPU")
      .def(py::init([](Engine& e, const std::vector<std::tuple<int64_t, int64_t, int64_t>>& experts,
                       double cpu_gbs, double cpu_gmacs, double pcie_gbs, size_t stream_bytes, int64_t csa_rows_gpu,
                       int device) {
             if (stream_bytes == 0) throw InputError("GpuEngine: stream_bytes must be positive");
             if (!(cpu_gbs >= 0 && cpu_gmacs >= 0 && pcie_gbs >= 0))
               throw InputError("GpuEngine: cpu_gbs, cpu_gmacs and pcie_gbs must be >= 0");
             const cuda::StreamCosts costs{cpu_gbs * 1e9, cpu_gmacs * 1e9, pcie_gbs * 1e9};
             if (csa_rows_gpu < -1) throw InputError("GpuEngine: csa_rows_gpu must be >= 0 or -1 (all)");
             std::vector<cuda::ExpertRange> ranges;
             for (const auto& [layer, first, end] : experts) ranges.push_back({layer, first, end});
             py::gil_scoped_release release;
             return std::make_unique<cuda::GpuEngine>(e, ranges, costs, stream_bytes, csa_rows_gpu, device);
           }),
           py::arg("engine"), py::arg("experts_on_gpu"), py::arg("cpu_gbs") = 0.0, py::arg("cpu_gmacs") = 0.0,
           py::arg("pcie_gbs") = 0.0, py::arg("stream_bytes") = cuda::GpuEngine::kStreamBytes,
           py::arg("csa_rows_gpu") = -1, py::arg("device") = 0, py::keep_alive<1, 2>(),
           "Uploads the engine's weights; experts_on_gpu: [(layer, first, end)] routed experts placed on the GPU "
           "(the others run on the CPU, or, in a chunk where the cost model on the rates cpu_gbs (CPU read GB/s), "
           "cpu_gmacs (CPU int8 G multiply-accumulates/s) and pcie_gbs says it pays (0: never), are copied to the "
           "GPU in double-buffered groups of at most stream_bytes / 2); csa_rows_gpu: CSA compressed rows per layer kept on the GPU (-1: "
           "all; the others are copied per step when the indexer selects them); device: the CUDA device it uses.")
      .def_property_readonly("weight_bytes", &cuda::GpuEngine::weight_bytes)
      .def_property_readonly("kv_bytes", &cuda::GpuEngine::kv_bytes)
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
#endif
}

}  // namespace pyv4
