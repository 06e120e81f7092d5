// The small fp32 ops of the forward pass (csrc/model/ops.h), bound one by one:
// the CPU references tests/test_cuda_ops.py checks the GPU's ops against.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <string>
#include <vector>

#include "common/error.h"
#include "model/attention.h"
#include "model/compressor_math.h"
#include "model/mhc.h"
#include "model/ops.h"
#include "python/bindings.h"

namespace py = pybind11;

namespace pyv4 {

int64_t check_hc(const F32Array& fn, int64_t mix_rows, const F32Array& base, const F32Array& X, const char* what) {
  if (fn.ndim() != 2 || fn.shape(0) != mix_rows || fn.shape(1) % 4 != 0 || fn.shape(1) == 0)
    throw InputError(std::string(what) + ": fn must be float32 [" + std::to_string(mix_rows) + ", 4 * D]");
  if (base.ndim() != 1 || base.shape(0) != mix_rows)
    throw InputError(std::string(what) + ": base must be float32 [" + std::to_string(mix_rows) + "]");
  if (X.ndim() != 2 || X.shape(1) != fn.shape(1))
    throw InputError(std::string(what) + ": X must be float32 [n, " + std::to_string(fn.shape(1)) + "]");
  return fn.shape(1) / 4;
}

void check_hc_post(const F32Array& post, const F32Array& comb, const F32Array& f, const F32Array& X,
                   const char* what) {
  if (X.ndim() != 2 || X.shape(1) % 4 != 0 || f.ndim() != 2 || f.shape(0) != X.shape(0) ||
      4 * f.shape(1) != X.shape(1) || post.size() != 4 * X.shape(0) || comb.size() != 16 * X.shape(0))
    throw InputError(std::string(what) + ": post [n, 4], comb [n, 4, 4], f [n, D], X [n, 4 * D] float32");
}

void check_pool(const F32Array& kv, const F32Array& gate, int64_t tail_start, int64_t b, int64_t ratio,
                int64_t width, bool overlap) {
  if (kv.ndim() != 2 || gate.ndim() != 2 || kv.shape(0) != gate.shape(0) || kv.shape(1) != gate.shape(1))
    throw InputError("compressor pool: kv and gate must be float32 [tail_len, pw] of one shape");
  if (ratio <= 0 || width <= 0 || b < 0 || kv.shape(1) < (overlap ? 2 : 1) * width)
    throw InputError("compressor pool: ratio, width > 0, b >= 0 and pw >= (overlap ? 2 : 1) * width");
  const int64_t first = overlap && b > 0 ? (b - 1) * ratio : b * ratio, end = (b + 1) * ratio;
  if (first < tail_start || end > tail_start + kv.shape(0))
    throw InputError("compressor pool: the tail [" + std::to_string(tail_start) + ", " +
                     std::to_string(tail_start + kv.shape(0)) + ") does not cover block " + std::to_string(b) +
                     "'s slots [" + std::to_string(first) + ", " + std::to_string(end) + ")");
}

void bind_ops(py::module_& m) {
  m.def(
      "ops_hc_pre",
      [](const F32Array& fn, const F32Array& base, const F32Array& scale, const F32Array& X, int64_t iters,
         float hc_eps, float rms_eps) {
        ModelConfig c;
        const int64_t M = c.hc_mix(), hc = c.hc_mult;
        c.n_embd = check_hc(fn, M, base, X, "ops_hc_pre");
        if (scale.ndim() != 1 || scale.shape(0) != 3) throw InputError("ops_hc_pre: scale must be float32 [3]");
        c.hc_sinkhorn_iters = iters;
        c.hc_eps = hc_eps;
        c.rms_eps = rms_eps;
        HyperConnWeights w;
        w.fn = WeightMatrix{GGMLType::F32, M, fn.shape(1), reinterpret_cast<const uint8_t*>(fn.data()),
                            sizeof(float) * static_cast<size_t>(fn.shape(1))};
        w.base.assign(base.data(), base.data() + M);
        w.scale.assign(scale.data(), scale.data() + 3);
        const int64_t n = X.shape(0), D = c.n_embd;
        py::array_t<float> y({n, D});
        HyperMix mix;
        ThreadPool pool(1);
        hc_pre(c, w, X.data(), n, y.mutable_data(), mix, pool);
        py::array_t<float> post({n, hc}), comb({n, hc, hc});
        std::copy(mix.post.begin(), mix.post.end(), post.mutable_data());
        std::copy(mix.comb.begin(), mix.comb.end(), comb.mutable_data());
        return py::make_tuple(y, post, comb);
      },
      py::arg("fn"), py::arg("base"), py::arg("scale"), py::arg("X"), py::arg("iters"), py::arg("hc_eps"),
      py::arg("rms_eps"), "hc_pre of the tokens X [n, 4*D]: (y [n, D], post [n, 4], comb [n, 4, 4]).");
  m.def(
      "ops_hc_post",
      [](const F32Array& post, const F32Array& comb, const F32Array& f, const F32Array& X) {
        check_hc_post(post, comb, f, X, "ops_hc_post");
        ModelConfig c;
        c.n_embd = f.shape(1);
        HyperMix mix;
        mix.post.assign(post.data(), post.data() + post.size());
        mix.comb.assign(comb.data(), comb.data() + comb.size());
        py::array_t<float> out({X.shape(0), X.shape(1)});
        std::copy(X.data(), X.data() + X.size(), out.mutable_data());
        ThreadPool pool(1);
        hc_post(c, mix, f.data(), out.mutable_data(), X.shape(0), pool);
        return out;
      },
      py::arg("post"), py::arg("comb"), py::arg("f"), py::arg("X"), "hc_post on a copy of X: X' [n, 4*D].");
  m.def(
      "ops_hc_head",
      [](const F32Array& fn, const F32Array& base, float scale, const F32Array& X, float hc_eps, float rms_eps) {
        ModelConfig c;
        c.n_embd = check_hc(fn, c.hc_mult, base, X, "ops_hc_head");
        c.hc_eps = hc_eps;
        c.rms_eps = rms_eps;
        ModelWeights w;
        w.hc_head_fn = WeightMatrix{GGMLType::F32, c.hc_mult, fn.shape(1), reinterpret_cast<const uint8_t*>(fn.data()),
                                    sizeof(float) * static_cast<size_t>(fn.shape(1))};
        w.hc_head_base.assign(base.data(), base.data() + c.hc_mult);
        w.hc_head_scale.assign(1, scale);
        const int64_t n = X.shape(0);
        py::array_t<float> y({n, c.n_embd});
        ThreadPool pool(1);
        hc_head(c, w, X.data(), n, y.mutable_data(), pool);
        return y;
      },
      py::arg("fn"), py::arg("base"), py::arg("scale"), py::arg("X"), py::arg("hc_eps"), py::arg("rms_eps"),
      "hc_head of the tokens X [n, 4*D]: y [n, D].");
  m.def(
      "ops_compressor_pool",
      [](const F32Array& kv, const F32Array& gate, int64_t tail_start, int64_t b, int64_t ratio, int64_t width,
         bool overlap) {
        check_pool(kv, gate, tail_start, b, ratio, width, overlap);
        py::array_t<float> row(width);
        for (int64_t ch = 0; ch < width; ++ch)
          row.mutable_data()[ch] = compressor_math::pool_channel(kv.data(), gate.data(), tail_start, kv.shape(1), b,
                                                                 ratio, width, overlap, ch);
        return row;
      },
      py::arg("kv"), py::arg("gate"), py::arg("tail_start"), py::arg("b"), py::arg("ratio"), py::arg("width"),
      py::arg("overlap"),
      "The pooling of compressor block b (before its norm, RoPE and rounding) from the raw projections kv / gate "
      "[tail_len, pw] of the tokens from position tail_start: [width].");
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
