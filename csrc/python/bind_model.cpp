// Engine bindings (session state: bind_session.cpp). The GIL is released while the forward
// pass runs so other Python threads (a UI, a stream reader) keep going.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common/error.h"
#include "model/engine.h"
#include "python/bindings.h"

namespace py = pybind11;

namespace pyv4 {

static py::dict config_dict(const ModelConfig& c) {
  py::dict d;
  d["vocab_size"] = c.n_vocab;
  d["context_length"] = c.n_ctx;
  d["hidden_size"] = c.n_embd;
  d["num_hidden_layers"] = c.n_layer;
  d["num_nextn_predict_layers"] = c.n_layer_mtp;
  d["num_attention_heads"] = c.n_head;
  d["head_dim"] = c.head_dim;
  d["qk_rope_head_dim"] = c.rope_dim;
  d["q_lora_rank"] = c.q_lora_rank;
  d["o_groups"] = c.o_groups;
  d["o_lora_rank"] = c.o_lora_rank;
  d["sliding_window"] = c.window;
  d["compress_ratios"] = c.compress_ratio;
  d["rope_theta"] = c.rope_theta;
  d["compress_rope_theta"] = c.compress_rope_theta;
  d["yarn_factor"] = c.yarn_factor;
  d["yarn_original_context"] = c.yarn_orig_ctx;
  d["index_n_heads"] = c.index_n_head;
  d["index_head_dim"] = c.index_head_dim;
  d["index_topk"] = c.index_topk;
  d["n_routed_experts"] = c.n_expert;
  d["num_experts_per_tok"] = c.n_expert_used;
  d["moe_intermediate_size"] = c.n_ff_exp;
  d["n_shared_experts"] = c.n_expert_shared;
  d["routed_scaling_factor"] = c.routed_scale;
  d["norm_topk_prob"] = c.norm_topk;
  d["swiglu_limit"] = c.swiglu_limit.empty() ? 0.0 : c.swiglu_limit[0];
  d["num_hash_layers"] = c.n_hash_layers;
  d["hc_mult"] = c.hc_mult;
  d["hc_sinkhorn_iters"] = c.hc_sinkhorn_iters;
  d["hc_eps"] = c.hc_eps;
  d["rms_norm_eps"] = c.rms_eps;
  d["bos_token_id"] = c.bos_id;
  d["eos_token_id"] = c.eos_id;
  return d;
}

// Logits as a numpy array that owns the vector's memory (no copy): [rows, V],
// or [V] where rows is 0 (the last position only).
static py::array_t<float> logits_array(std::vector<float>&& v, int64_t rows, int64_t V) {
  auto* owned = new std::vector<float>(std::move(v));
  py::capsule free_owned(owned, [](void* p) { delete static_cast<std::vector<float>*>(p); });
  if (rows > 0) return py::array_t<float>({rows, V}, owned->data(), free_owned);
  return py::array_t<float>({V}, owned->data(), free_owned);
}

void bind_model(py::module_& m) {
  py::class_<Engine>(m, "Engine", "A loaded DeepSeek-V4 GGUF")
      .def(py::init<const std::string&, int, bool, bool>(), py::arg("path"), py::arg("threads") = 0,
           py::arg("resident") = false, py::arg("split") = true,
           py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("resident", [](const Engine& e) { return e.file().resident(); })
      .def_property_readonly("split_matrices", &Engine::split_matrices,
                             "Matrices copied into the split layout at load.")
      .def(
          "profile",
          [](Engine& e) -> py::object {
            const Profiler* p = e.profiler();
            if (!p) return py::none();
            py::dict ops;
            for (const auto& en : p->entries()) ops[py::str(en.kind)] = py::make_tuple(en.seconds, en.calls);
            py::dict d;
            d["ops"] = ops;
            d["total"] = p->total_seconds();
            d["evals"] = p->evals();
            return d;
          },
          "Per-op wall time since the last reset (PYV4_PROFILE=1), else None: {'ops': {kind: "
          "(seconds, calls)}, 'total': seconds in eval, 'evals': eval calls}.")
      .def("profile_reset", [](Engine& e) {
        if (e.profiler()) e.profiler()->reset();
      })
      .def("config", [](const Engine& e) { return config_dict(e.config()); })
      .def_property_readonly("n_vocab", [](const Engine& e) { return e.config().n_vocab; })
      .def_property_readonly("n_ctx", [](const Engine& e) { return e.config().n_ctx; })
      .def_property_readonly("n_threads", [](Engine& e) { return e.pool().size(); })
      .def_property_readonly("fingerprint", [](const Engine& e) { return e.file().fingerprint(); })
      .def(
          "eval",
          [](Engine& e, KVState& s, py::array_t<int64_t, py::array::c_style | py::array::forcecast> tokens,
             bool all_logits) {
            const int64_t n = tokens.size();
            std::vector<int64_t> ids(tokens.data(), tokens.data() + n);
            std::vector<float> logits;
            {
              py::gil_scoped_release release;
              logits = e.eval(s, ids.data(), n, all_logits);
            }
            const int64_t V = e.config().n_vocab;
            return logits_array(std::move(logits), all_logits ? n : 0, V);
          },
          py::arg("state"), py::arg("tokens"), py::arg("all_logits"))
      .def("imatrix_begin", &Engine::begin_imatrix,
           "Start collecting per-matrix input statistics (sum of x^2 per column, token counts).")
      .def(
          "imatrix_end",
          [](Engine& e) {
            auto col = e.end_imatrix();
            py::list out;
            for (const auto& en : col->entries()) {
              py::array_t<double> s({en.n_mat, en.cols});
              std::copy(en.sum2.begin(), en.sum2.end(), s.mutable_data());
              py::array_t<int64_t> c(en.n_mat);
              std::copy(en.count.begin(), en.count.end(), c.mutable_data());
              out.append(py::make_tuple(en.name, s, c));
            }
            return out;
          },
          "Stop collecting; [(tensor name, sum2 [n_mat, cols] float64, counts [n_mat] int64)].")
      .def(
          "eval_batch",
          [](Engine& e, const std::vector<std::tuple<KVState*, std::vector<int64_t>, bool>>& batch) {
            std::vector<Engine::BatchItem> items;
            for (const auto& [state, ids, all] : batch) {
              if (!state) throw InputError("eval_batch: a batch item has no session");
              items.push_back({state, ids.data(), static_cast<int64_t>(ids.size()), all});
            }
            std::vector<std::vector<float>> logits;
            {
              py::gil_scoped_release release;
              logits = e.eval_batch(items.data(), static_cast<int64_t>(items.size()));
            }
            const int64_t V = e.config().n_vocab;
            py::list out;
            for (size_t i = 0; i < items.size(); ++i) {
              const int64_t rows = static_cast<int64_t>(logits[i].size()) / V;
              out.append(logits_array(std::move(logits[i]), items[i].all_logits ? rows : 0, V));
            }
            return out;
          },
          py::arg("batch"),
          "[(state, tokens, all_logits), ...] -> [logits, ...]: one forward pass for several sessions.");
}

}  // namespace pyv4
