// Kernel-level bindings (used by tests/test_kernels.py and bench/kernels.py).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "common/error.h"
#include "python/bindings.h"
#include "quant/bandwidth.h"
#include "quant/cpu_features.h"
#include "quant/matmul.h"
#include "quant/quantize_lowbit.h"
#include "quant/split_layout.h"

namespace py = pybind11;

namespace pyv4 {

GGMLType type_from_name(const std::string& name) {
  for (uint32_t id = 0; id < 64; ++id) {
    TypeTraits t;
    if (type_traits(id, &t) && name == t.name) return static_cast<GGMLType>(id);
  }
  throw InputError("unknown GGML type name '" + name + "'");
}

WeightMatrix make_weight(const std::string& type_name, const U8Array& raw, int64_t rows,
                         int64_t cols) {
  WeightMatrix W;
  W.type = type_from_name(type_name);
  W.rows = rows;
  W.cols = cols;
  W.row_stride = row_bytes(W.type, cols, "weight");
  if (static_cast<size_t>(raw.size()) < W.row_stride * static_cast<size_t>(rows))
    throw InputError("weight buffer holds " + std::to_string(raw.size()) + " bytes, need " +
                     std::to_string(W.row_stride * rows));
  W.data = raw.data();
  return W;
}

namespace {

// One pool per thread count, created on first use and kept (so bench loops do
// not create threads per call). Callers hold pool_mutex() while they use it
// (one pool, one caller at a time; Python threads may call concurrently).
std::mutex& pool_mutex() {
  static std::mutex mu;
  return mu;
}

ThreadPool& pool_for(int threads) {
  static std::unique_ptr<ThreadPool> pool;
  static int n = -1;
  if (!pool || n != threads) {
    pool.reset();
    pool = std::make_unique<ThreadPool>(threads);
    n = threads;
  }
  return *pool;
}

void require_split_form(GGMLType t, int64_t cols) {
  if (!split::fits(t, cols))
    throw InputError(std::string("no split layout for ") + type_name(t) + " with " +
                     std::to_string(cols) + " columns (Q4_0 or MXFP4, cols % 512 == 0)");
}

// W in the row layout asked for: "ggml" (raw as given), "split" (a split copy,
// owned by *keep), or "auto" (split exactly when the model loader would).
WeightMatrix with_layout(const WeightMatrix& W, const std::string& layout,
                         std::shared_ptr<uint8_t>* keep) {
  bool want;
  if (layout == "ggml") {
    want = false;
  } else if (layout == "split") {
    require_split_form(W.type, W.cols);
    want = true;
  } else if (layout == "auto") {
    want = active_isa() == Isa::AVX512 && split::fits(W.type, W.cols);
  } else {
    throw InputError("layout must be 'ggml', 'split' or 'auto', not '" + layout + "'");
  }
  if (!want) return W;
  WeightMatrix out;
  *keep = split::split_copy(W, &out, /*release_source=*/false);
  return out;
}

void check_x(const F32Array& x, int64_t cols, int64_t* n_tokens) {
  if (x.ndim() != 2 || x.shape(1) != cols)
    throw InputError("x must be float32 [n_tokens, cols=" + std::to_string(cols) + "]");
  *n_tokens = x.shape(0);
}

}  // namespace

void bind_quant(py::module_& m) {
  m.def(
      "quantize_lowbit",
      [](const std::string& type_name, const F32Array& x, const std::optional<F32Array>& importance,
         int threads) {
        const GGMLType t = type_from_name(type_name);
        if (x.ndim() != 2) throw InputError("x must be a 2-D float32 array [rows, cols]");
        const int64_t rows = x.shape(0), cols = x.shape(1);
        const float* imp = nullptr;
        int64_t imp_stride = 0;
        if (importance) {
          const F32Array& w = *importance;
          const bool per_col = w.ndim() == 1 && w.shape(0) == cols;
          if (!per_col && !(w.ndim() == 2 && w.shape(0) == rows && w.shape(1) == cols))
            throw InputError("importance must be float32 [cols] or [rows, cols] = [" +
                             std::to_string(rows) + ", " + std::to_string(cols) + "]");
          imp = w.data();
          imp_stride = per_col ? 0 : cols;
        }
        check_lowbit_args(t, rows, cols, imp != nullptr);  // before allocating
        const int64_t out_b = cols / 256 * static_cast<int64_t>(traits(t).block_bytes);
        py::array_t<uint8_t> out({rows, out_b});
        uint8_t* op = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          std::lock_guard<std::mutex> lock(pool_mutex());
          quantize_lowbit(t, x.data(), rows, cols, imp, imp_stride, op, pool_for(threads));
        }
        return out;
      },
      py::arg("type_name"), py::arg("x"), py::arg("importance") = py::none(),
      py::arg("threads") = 0,
      "Importance-weighted quantization of float32 rows [rows, cols] (cols % 256 == 0) to "
      "GGML 'Q2_K', 'Q3_K', 'IQ2_XXS' or 'IQ4_XS' blocks [rows, cols/256*block bytes], byte for byte "
      "the search of convert/quants_lowbit.py. importance: per-element weights [rows, cols] or "
      "per column [cols] (required for IQ2_XXS). threads <= 0: all cores.");
  m.def(
      "quant_f32_to_f16",
      [](const F32Array& x) {
        py::array_t<uint16_t> out(x.size());
        for (py::ssize_t i = 0; i < x.size(); ++i) out.mutable_data()[i] = f32_to_f16_bits(x.data()[i]);
        return out;
      },
      py::arg("x"), "float32 -> IEEE half bits, round to nearest even (as numpy's astype).");

  m.def(
      "quant_dequantize",
      [](const std::string& type_name, const U8Array& raw, int64_t n) {
        const GGMLType t = type_from_name(type_name);
        const size_t need = row_bytes(t, n, "quant_dequantize");
        if (static_cast<size_t>(raw.size()) < need)
          throw InputError("raw buffer holds " + std::to_string(raw.size()) + " bytes, need " +
                           std::to_string(need));
        py::array_t<float> out(n);
        dequantize_row(t, raw.data(), out.mutable_data(), n);
        return out;
      },
      py::arg("type_name"), py::arg("raw"), py::arg("n"),
      "Scalar reference decode of n elements of a GGML type to float32.");

  m.def(
      "quant_dequantize_rows",
      [](const std::string& type_name, const U8Array& raw, int64_t cols, int threads) {
        const GGMLType t = type_from_name(type_name);
        const size_t rb = row_bytes(t, cols, "quant_dequantize_rows");
        if (raw.ndim() != 2 || static_cast<size_t>(raw.shape(1)) != rb)
          throw InputError(std::string("raw must be uint8 [rows, ") + std::to_string(rb) + "] (" +
                           type_name + " rows of " + std::to_string(cols) + " elements)");
        const int64_t rows = raw.shape(0);
        py::array_t<float> out({rows, cols});
        float* op = out.mutable_data();
        const uint8_t* ip = raw.data();
        {
          py::gil_scoped_release nogil;
          std::lock_guard<std::mutex> lock(pool_mutex());
          pool_for(threads).parallel_for_balanced(rows, 1, [&](int64_t r0, int64_t r1, int) {
            for (int64_t r = r0; r < r1; ++r) dequantize_row(t, ip + r * rb, op + r * cols, cols);
          });
        }
        return out;
      },
      py::arg("type_name"), py::arg("raw"), py::arg("cols"), py::arg("threads") = 0,
      "Decode GGML rows [rows, row bytes] to float32 [rows, cols] with the scalar reference "
      "decoder (bit-exact with gguf.quants), rows spread over the thread pool. threads <= 0: all cores.");
  m.def(
      "quant_matmul",
      [](const std::string& type_name, const U8Array& raw, int64_t rows, int64_t cols,
         const F32Array& x, int threads, const std::string& layout) {
        std::shared_ptr<uint8_t> keep;
        const WeightMatrix W = with_layout(make_weight(type_name, raw, rows, cols), layout, &keep);
        int64_t n;
        check_x(x, cols, &n);
        py::array_t<float> y({n, rows});
        float* yp = y.mutable_data();
        const float* xp = x.data();
        {
          py::gil_scoped_release nogil;
          if (threads == 1) {
            matmul_serial(W, xp, cols, n, yp, rows);
          } else {
            matmul(W, xp, cols, n, yp, rows, pool_for(threads));
          }
        }
        return y;
      },
      py::arg("type_name"), py::arg("raw"), py::arg("rows"), py::arg("cols"), py::arg("x"),
      py::arg("threads") = 1, py::arg("layout") = "ggml",
      "y[n, rows] = x[n, cols] @ W.T for a raw GGML weight [rows, row_bytes] (active ISA and "
      "compute mode; threads == 1 uses matmul_serial). layout: 'ggml', 'split' (computed on a "
      "split copy) or 'auto' (split when the model loader would).");

  m.def(
      "quant_split",
      [](const std::string& type_name, const U8Array& raw, int64_t rows, int64_t cols) {
        const WeightMatrix W = make_weight(type_name, raw, rows, cols);
        require_split_form(W.type, cols);
        const size_t out_b = split::row_stride(W.type, cols);
        py::array_t<uint8_t> out({rows, static_cast<int64_t>(out_b)});
        for (int64_t r = 0; r < rows; ++r)
          split::split_row(W.type, cols, W.row(r), out.mutable_data() + r * out_b);
        return out;
      },
      py::arg("type_name"), py::arg("raw"), py::arg("rows"), py::arg("cols"),
      "The split layout (quant/split_layout.h) of a raw GGML weight: [rows, split row bytes].");

  m.def(
      "quant_unsplit",
      [](const std::string& type_name, const U8Array& split_rows, int64_t rows, int64_t cols) {
        const GGMLType t = type_from_name(type_name);
        require_split_form(t, cols);
        const size_t in = split::row_stride(t, cols), out_b = row_bytes(t, cols);
        if (static_cast<size_t>(split_rows.size()) < in * static_cast<size_t>(rows))
          throw InputError("split buffer too small");
        py::array_t<uint8_t> out({rows, static_cast<int64_t>(out_b)});
        for (int64_t r = 0; r < rows; ++r)
          split::unsplit_row(t, cols, split_rows.data() + r * in, out.mutable_data() + r * out_b);
        return out;
      },
      py::arg("type_name"), py::arg("split_rows"), py::arg("rows"), py::arg("cols"),
      "Split rows back to GGML blocks (the inverse of quant_split).");

  m.def(
      "quant_matmul_many",
      [](const py::list& weights, const py::list& xs, int threads) {
        if (weights.size() != xs.size()) throw InputError("one x per weight");
        const size_t n = weights.size();
        std::vector<WeightMatrix> W(n);
        std::vector<U8Array> raw;  // keep the (possibly converted) buffers alive
        std::vector<F32Array> X;
        std::vector<py::array_t<float>> Y;
        std::vector<MatmulTask> tasks(n);
        for (size_t i = 0; i < n; ++i) {
          const auto w = weights[i].cast<py::tuple>();
          if (w.size() != 4 && w.size() != 5)
            throw InputError("weights: (type_name, raw, rows, cols[, layout]) tuples");
          const int64_t rows = w[2].cast<int64_t>(), cols = w[3].cast<int64_t>();
          raw.push_back(w[1].cast<U8Array>());
          const std::string layout = w.size() == 5 ? w[4].cast<std::string>() : "ggml";
          if (layout == "split") {  // raw holds quant_split's rows: used as they are
            const GGMLType t = type_from_name(w[0].cast<std::string>());
            require_split_form(t, cols);
            W[i] = WeightMatrix{t, rows, cols, raw.back().data(), split::row_stride(t, cols), true};
            if (static_cast<size_t>(raw.back().size()) < W[i].row_stride * static_cast<size_t>(rows))
              throw InputError("split buffer too small");
            if (reinterpret_cast<uintptr_t>(W[i].data) % 64 != 0)  // the kernels' aligned loads
              throw InputError("split rows must start on a 64-byte boundary");
          } else if (layout == "ggml") {
            W[i] = make_weight(w[0].cast<std::string>(), raw.back(), rows, cols);
          } else {
            throw InputError("layout must be 'ggml' or 'split', not '" + layout + "'");
          }
          X.push_back(xs[i].cast<F32Array>());
          int64_t nt;
          check_x(X.back(), cols, &nt);
          Y.emplace_back(std::vector<py::ssize_t>{nt, rows});
          tasks[i] = MatmulTask{&W[i], X.back().data(), cols, nt, Y.back().mutable_data(), rows};
        }
        {
          py::gil_scoped_release nogil;
          matmul_many(tasks.data(), static_cast<int64_t>(n), pool_for(threads));
        }
        return Y;
      },
      py::arg("weights"), py::arg("xs"), py::arg("threads") = 2,
      "matmul_many over [(type_name, raw, rows, cols[, layout])] with one x each; returns the y "
      "arrays. layout 'split': raw holds quant_split's rows (default 'ggml'). x arrays that are "
      "the same float32 object share one activation quantization.");

  m.def(
      "quant_matmul_time",
      [](const std::string& type_name, const U8Array& raw, int64_t rows, int64_t cols,
         const F32Array& x, int threads, int reps, int copies, const std::string& layout) {
        if (copies < 1) throw InputError("copies must be >= 1");
        // raw holds `copies` weight matrices back to back; call r uses copy r % copies
        // (so a benchmark can cycle through more bytes than the last-level cache).
        std::shared_ptr<uint8_t> keep;
        WeightMatrix W =
            with_layout(make_weight(type_name, raw, rows * copies, cols), layout, &keep);
        W.rows = rows;
        const size_t bytes = W.row_stride * static_cast<size_t>(rows);
        int64_t n;
        check_x(x, cols, &n);
        std::vector<float> y(static_cast<size_t>(n * rows));
        double sec;
        {
          py::gil_scoped_release nogil;
          ThreadPool& pool = pool_for(threads);
          for (int c = 0; c < copies; ++c) {  // warm-up (and page-in) every copy
            WeightMatrix Wc = W;
            Wc.data = W.data + c * bytes;
            matmul(Wc, x.data(), cols, n, y.data(), rows, pool);
          }
          const auto t0 = std::chrono::steady_clock::now();
          for (int r = 0; r < reps; ++r) {
            WeightMatrix Wc = W;
            Wc.data = W.data + (r % copies) * bytes;
            matmul(Wc, x.data(), cols, n, y.data(), rows, pool);
          }
          sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        }
        return sec / reps;
      },
      py::arg("type_name"), py::arg("raw"), py::arg("rows"), py::arg("cols"), py::arg("x"),
      py::arg("threads"), py::arg("reps"), py::arg("copies") = 1, py::arg("layout") = "auto",
      "Seconds per matmul call, cycling through `copies` weights stored back to back in raw "
      "(layout as in quant_matmul; default: what a loaded model would use).");

  m.def(
      "read_bandwidth",
      [](size_t bytes, int threads, int reps) {
        py::gil_scoped_release nogil;
        return read_bandwidth_gbs(bytes, reps, pool_for(threads));
      },
      py::arg("bytes"), py::arg("threads"), py::arg("reps") = 3,
      "Memory read bandwidth in GB/s: all threads stream one buffer of `bytes`.");
  m.def(
      "int8_peak",
      [](int threads, double seconds) {
        py::gil_scoped_release nogil;
        return int8_peak_gops(seconds, pool_for(threads));
      },
      py::arg("threads"), py::arg("seconds") = 0.2,
      "Peak int8 dot-product rate in Gops/s (multiply-adds x2) of `threads` threads running "
      "vpdpbusd zmm; 0 without AVX-512 VNNI.");

  m.def("set_isa", [](const std::string& name) { set_isa(name); }, py::arg("name"),
        "Force the kernel ISA: scalar | avx2 | avx512 | auto (ValueError if unsupported).");
  m.def("active_isa", [] { return std::string(isa_name(active_isa())); });
  m.def("best_isa", [] { return std::string(isa_name(best_isa())); });
  m.def("isa_supported", [](const std::string& name) { return isa_supported(parse_isa(name)); },
        py::arg("name"));
  m.def("set_compute_mode", [](const std::string& name) { set_compute_mode(name); },
        py::arg("mode"), "reference | fast");
  m.def("compute_mode", [] { return std::string(compute_mode_name(compute_mode())); });
  m.def("avx512_extensions", [] { return avx512_extensions(); });
  m.def("set_avx512_extensions", [](bool on) { set_avx512_extensions(on); }, py::arg("on"),
        "use the VBMI / GFNI / BITALG kernels where the CPU has them (default True)");
  m.def("lane_gemm_min_tokens", [](const std::string& type_name) { return lane_gemm_min_tokens(type_from_name(type_name)); },
        py::arg("type_name"),
        "the token count from which a matmul of this type runs the AVX-512 lane GEMM under the active "
        "ISA (0: never)");
  m.def("cpu_features", [] {
    const CpuFeatures& f = cpu_features();
    py::dict d;
    d["sse2"] = f.sse2;
    d["avx"] = f.avx;
    d["avx2"] = f.avx2;
    d["fma"] = f.fma;
    d["f16c"] = f.f16c;
    d["avx512f"] = f.avx512f;
    d["avx512bw"] = f.avx512bw;
    d["avx512vl"] = f.avx512vl;
    d["avx512dq"] = f.avx512dq;
    d["avx512vnni"] = f.avx512vnni;
    d["avx512bf16"] = f.avx512bf16;
    d["avx512vbmi"] = f.avx512vbmi;
    d["gfni"] = f.gfni;
    d["avx512bitalg"] = f.avx512bitalg;
    d["os_avx"] = f.os_avx;
    d["os_avx512"] = f.os_avx512;
    return d;
  });
}

}  // namespace pyv4
