// Session-state bindings: KVState (csrc/kv), the Engine methods that create,
// truncate, save and load it, and the QAT helpers the tests compare against
// their numpy reference.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common/error.h"
#include "kv/kv_kernels.h"
#include "kv/qat.h"
#include "kv/session_file.h"
#include "model/engine.h"
#include "python/bindings.h"

namespace py = pybind11;

namespace pyv4 {

namespace {

using F32Array = py::array_t<float, py::array::c_style | py::array::forcecast>;

const char* kind_name(AttnKind k) {
  return k == AttnKind::CSA ? "csa" : (k == AttnKind::HCA ? "hca" : "sliding");
}

py::dict stats_dict(const KVState& s) {
  py::dict d;
  d["n_tokens"] = s.n_tokens();
  d["kv_type"] = kv_type_name(s.type());
  d["kv_bytes"] = s.kv_bytes();
  d["snapshot_bytes"] = s.snapshot_bytes();
  d["state_bytes"] = s.state_bytes();
  d["file_bytes"] = s.file_bytes();
  d["chunk_bytes"] = s.chunk_bytes();
  d["snapshot_every"] = s.snap_every();
  d["row_bytes"] = s.main_codec().bytes;
  d["index_key_bytes"] = s.index_codec().bytes;
  int64_t win = 0, csa = 0, hca = 0, idx = 0;
  py::list layers, touched;
  for (int64_t il = 0; il < s.n_layer(); ++il) {
    const LayerState& L = s.layer(il);
    win += L.window.n;
    (L.kind == AttnKind::CSA ? csa : hca) += L.comp.n;
    idx += L.index.n;
    py::dict l;
    l["kind"] = kind_name(L.kind);
    l["window_rows"] = L.window.n;
    l["compressed_rows"] = L.comp.n;
    l["index_keys"] = L.index.n;
    py::dict t;
    t["window"] = L.touch.window;
    t["compressed"] = L.touch.compressed;
    t["index_keys"] = L.touch.index_keys;
    l["touched"] = t;
    layers.append(l);
    if (L.kind == AttnKind::CSA) touched.append(L.touch.compressed);
  }
  py::dict rows;
  rows["window"] = win;
  rows["csa"] = csa;
  rows["hca"] = hca;
  rows["index_keys"] = idx;
  d["rows"] = rows;
  d["layers"] = layers;
  d["csa_rows_touched"] = touched;
  int64_t mx = 0;
  for (auto v : touched) mx = std::max<int64_t>(mx, v.cast<int64_t>());
  d["csa_rows_touched_max"] = mx;
  return d;
}

// The codec of one row for the codec bindings below (kind "index" or main).
RowCodec test_codec(const std::string& kv, const std::string& kind, py::ssize_t width, int64_t rope_dim) {
  return RowCodec::make(parse_kv_type(kv), kind == "index" ? RowCodec::Kind::Index : RowCodec::Kind::Main,
                        static_cast<int64_t>(width), rope_dim);
}

py::array_t<float> to_array(const std::vector<float>& v) {
  py::array_t<float> a(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

}  // namespace

void bind_session(py::module_& m) {
  py::class_<KVState>(m, "KVState", "Per-session decode state (csrc/kv)")
      .def_property_readonly("n_tokens", &KVState::n_tokens)
      .def_property_readonly("stamp", &KVState::stamp,
                             "Renewed by every change (KVState::stamp): what the GPU's copy of the rows checks")
      .def_property_readonly("kv_type", [](const KVState& s) { return kv_type_name(s.type()); })
      .def_property_readonly("tokens", [](const KVState& s) {
        py::array_t<int64_t> a(static_cast<py::ssize_t>(s.tokens().size()));
        std::copy(s.tokens().begin(), s.tokens().end(), a.mutable_data());
        return a;
      })
      .def("reset", &KVState::reset)
      .def("fork", &KVState::fork)
      .def("stats", &stats_dict)
      .def("_fill_synthetic", &KVState::fill_synthetic, py::arg("n_tokens"), py::arg("seed") = 0,
           "benchmarks only: synthetic rows for n_tokens (see csrc/kv/kv_state.h)");

  auto engine = py::reinterpret_borrow<py::object>(m.attr("Engine"));
  py::class_<Engine>& E = static_cast<py::class_<Engine>&>(engine);
  E.def(
       "new_session",
       [](const Engine& e, const std::string& kv, const std::string& path, int64_t snap_every) {
         return e.new_state(parse_kv_type(kv), path, snap_every);
       },
       py::arg("kv") = "fp8", py::arg("path") = "", py::arg("snapshot_every") = KVState::kDefaultSnapEvery)
      .def(
          "truncate", [](Engine& e, KVState& s, int64_t n) { e.truncate(s, n); }, py::arg("state"),
          py::arg("n_tokens"),
           py::call_guard<py::gil_scoped_release>())
      .def(
          "save_session",
          [](const Engine& e, const KVState& s, const std::string& path) {
            SessionFile::save(s, e.file().fingerprint(), path);
          },
          py::arg("state"), py::arg("path"), py::call_guard<py::gil_scoped_release>())
      .def(
          "load_session",
          [](const Engine& e, const std::string& path, bool verify) {
            return SessionFile::load(e.config(), e.file().fingerprint(), path, verify);
          },
          py::arg("path"), py::arg("verify") = false, py::call_guard<py::gil_scoped_release>());

  m.def(
      "session_file_info",
      [](const std::string& path) {
        const SessionFileInfo i = SessionFile::info(path);
        py::dict d;
        d["version"] = i.version;
        d["fingerprint"] = i.fingerprint;
        d["kv_type"] = kv_type_name(i.type);
        d["n_tokens"] = i.n_tokens;
        d["file_bytes"] = i.file_bytes;
        py::array_t<int64_t> t(static_cast<py::ssize_t>(i.tokens.size()));
        std::copy(i.tokens.begin(), i.tokens.end(), t.mutable_data());
        d["tokens"] = t;
        return d;
      },
      py::arg("path"));

  // QAT building blocks (spec §2), for tests against the numpy reference.
  m.def("qat_act_quant_fp8", [](F32Array x, int64_t block) {
    std::vector<float> v(x.data(), x.data() + x.size());
    if (block <= 0) throw InputError("block must be positive");
    act_quant_fp8(v.data(), static_cast<int64_t>(v.size()), block);
    return to_array(v);
  });
  m.def("qat_act_quant_fp4", [](F32Array x, int64_t block) {
    std::vector<float> v(x.data(), x.data() + x.size());
    if (block <= 0) throw InputError("block must be positive");
    act_quant_fp4(v.data(), static_cast<int64_t>(v.size()), block);
    return to_array(v);
  });
  m.def("qat_hadamard", [](F32Array x) {
    std::vector<float> v(x.data(), x.data() + x.size());
    const int64_t n = static_cast<int64_t>(v.size());
    if (n == 0 || (n & (n - 1)) != 0) throw InputError("hadamard needs a power-of-two length");
    hadamard(v.data(), n);
    return to_array(v);
  });
  // The KV kernels of the current ISA / compute mode, for tests against the
  // reference table and for timing.
  m.def(
      "kv_index_scores",
      [](F32Array q, F32Array w, F32Array keys) {
        if (q.ndim() != 2 || w.ndim() != 1 || keys.ndim() != 2 || w.shape(0) != q.shape(0) ||
            keys.shape(1) != q.shape(1))
          throw InputError("kv_index_scores: q [heads, dim], w [heads], keys [n, dim]");
        const int64_t nih = q.shape(0), dim = q.shape(1), n = keys.shape(0);
        std::vector<float> qT(nih * dim), out(n);
        for (int64_t h = 0; h < nih; ++h)
          for (int64_t i = 0; i < dim; ++i) qT[i * nih + h] = q.data()[h * dim + i];
        std::vector<const float*> kp(n);
        for (int64_t r = 0; r < n; ++r) kp[r] = keys.data() + r * dim;
        kv_kernels().index_scores(qT.data(), w.data(), nih, dim, kp.data(), n, out.data());
        return to_array(out);
      },
      py::arg("q"), py::arg("w"), py::arg("keys"));
  m.def(
      "kv_index_scores_fp4",
      [](py::array_t<uint8_t, py::array::c_style | py::array::forcecast> q,
         F32Array w, py::array_t<uint8_t, py::array::c_style | py::array::forcecast> keys, int64_t dim) {
        const KvKernels& kk = kv_kernels();
        if (!kk.index_scores_fp4) throw InputError("kv_index_scores_fp4: no FP4 scoring kernel for this ISA / mode");
        const int64_t rec = dim / 2 + dim / 32;
        if (q.ndim() != 2 || keys.ndim() != 2 || q.shape(1) < rec || keys.shape(1) < rec ||
            w.ndim() != 1 || w.shape(0) != q.shape(0) || !fp4_scoring_fits(q.shape(0), dim))
          throw InputError("kv_index_scores_fp4: q [heads, >= record], keys [n, >= record], w [heads]; heads % 16, dim % 32");
        const int64_t nih = q.shape(0), n = keys.shape(0);
        std::vector<uint8_t> prep(fp4_prep_bytes(nih, dim));
        std::vector<float> out(n);
        std::vector<const uint8_t*> kp(n);
        for (int64_t r = 0; r < n; ++r) kp[r] = keys.data() + r * keys.shape(1);
        kk.fp4_query(q.data(), q.shape(1), nih, dim, prep.data());  // rows may be padded, as RowCodec pads
        kk.index_scores_fp4(prep.data(), w.data(), nih, dim, kp.data(), n, out.data());
        return to_array(out);
      },
      py::arg("q"), py::arg("w"), py::arg("keys"), py::arg("dim"));
  m.def(
      "kv_attend",
      [](F32Array q, F32Array rows, F32Array sinks, float scale) {
        if (q.ndim() != 2 || rows.ndim() != 2 || sinks.ndim() != 1 || sinks.shape(0) != q.shape(0) ||
            rows.shape(1) != q.shape(1))
          throw InputError("kv_attend: q [heads, dim], rows [n, dim], sinks [heads]");
        const int64_t nh = q.shape(0), d = q.shape(1), nk = rows.shape(0);
        std::vector<float> p(nh * nk), out(nh * d);
        std::vector<const float*> rp(nk);
        for (int64_t r = 0; r < nk; ++r) rp[r] = rows.data() + r * d;
        kv_kernels().attend(q.data(), nh, d, rp.data(), nk, sinks.data(), scale, p.data(), out.data());
        return to_array(out);
      },
      py::arg("q"), py::arg("rows"), py::arg("sinks"), py::arg("scale"));
  m.def(
      "kv_decode_fp4",
      [](py::array_t<uint8_t, py::array::c_style | py::array::forcecast> rec, int64_t width) {
        if (width <= 0 || width % 32 != 0 || rec.size() != width / 2 + width / 32)
          throw InputError("kv_decode_fp4: a record of width/2 + width/32 bytes, width a multiple of 32");
        std::vector<float> out(width);
        kv_kernels().decode_fp4(rec.data(), width, out.data());
        return to_array(out);
      },
      py::arg("record"), py::arg("width"));
  m.def(
      "kv_decode_fp8",
      [](py::array_t<uint8_t, py::array::c_style | py::array::forcecast> rec, int64_t width, int64_t rope_dim) {
        const int64_t nope = width - rope_dim;
        if (width <= 0 || rope_dim < 0 || nope < 0 || rec.size() < nope + 2 * rope_dim + (nope + 63) / 64)
          throw InputError("kv_decode_fp8: a main record of nope e4m3 bytes, 2 * rope_dim bf16 bytes and a "
                           "scale per 64 nope values");
        std::vector<float> out(width);
        kv_kernels().decode_fp8_main(rec.data(), nope, width, out.data());
        return to_array(out);
      },
      py::arg("record"), py::arg("width"), py::arg("rope_dim"));
  m.def(
      "kv_index_round_fp4",
      [](F32Array x, int64_t rec_bytes) {
        const int64_t width = x.size();
        if (width < 32 || width % 32 != 0 || (width & (width - 1)) != 0)
          throw InputError("kv_index_round_fp4: width must be a power of two and a multiple of 32");
        if (rec_bytes < width / 2 + width / 32)
          throw InputError("kv_index_round_fp4: a record needs width / 2 + width / 32 bytes");
        std::vector<float> v(x.data(), x.data() + width);
        py::array_t<uint8_t> rec(rec_bytes);
        kv_kernels().index_round_fp4(v.data(), width, rec.mutable_data(), static_cast<size_t>(rec_bytes));
        return py::make_tuple(to_array(v), rec);
      },
      py::arg("row"), py::arg("record_bytes"),
      "(rounded row, FP4 record) of an indexer query or key of kv=\"fp8\" (Hadamard + FP4 QAT).");
  // (rounded, decoded, record bytes) of one row through a KV type's codec.
  m.def(
      "kv_codec_roundtrip",
      [](const std::string& kv, const std::string& kind, F32Array x, int64_t rope_dim) {
        const RowCodec c = test_codec(kv, kind, x.size(), rope_dim);
        std::vector<float> v(x.data(), x.data() + x.size()), out(v.size());
        c.round(v.data());
        std::vector<uint8_t> rec(c.bytes);
        c.encode(v.data(), rec.data());
        c.decode(rec.data(), out.data());
        return py::make_tuple(to_array(v), to_array(out), c.bytes);
      },
      py::arg("kv"), py::arg("kind"), py::arg("row"), py::arg("rope_dim") = 0);
  // The record bytes of one row (rounded first), as a session stores it.
  m.def(
      "kv_codec_encode",
      [](const std::string& kv, const std::string& kind, F32Array x, int64_t rope_dim) {
        const RowCodec c = test_codec(kv, kind, x.size(), rope_dim);
        std::vector<float> v(x.data(), x.data() + x.size());
        c.round(v.data());
        py::array_t<uint8_t> rec(static_cast<py::ssize_t>(c.bytes));
        c.encode(v.data(), rec.mutable_data());
        return rec;
      },
      py::arg("kv"), py::arg("kind"), py::arg("row"), py::arg("rope_dim") = 0);
}

}  // namespace pyv4
