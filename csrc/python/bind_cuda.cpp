// CUDA bindings. Always: cuda_available() and host calls of the block math the
// kernels run (csrc/cuda/block_math.h), which tests/test_cuda_host.py checks
// on any CPU. With CUDA (PYV4_HAS_CUDA): the GPU ops on numpy arrays (copy to
// the device, run, copy back), which tests/test_cuda_ops.py compares with the
// CPU's. CUDA errors reach Python as RuntimeError (cuda::CudaError).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"
#include "cuda/block_math.h"
#include "kv/qat.h"
#include "python/bindings.h"

#ifdef PYV4_HAS_CUDA
#include "cuda/buffer.h"
#include "cuda/matmul.h"
#include "cuda/model_ops.h"
#include "cuda/ops.h"
#include "cuda/runtime.h"
#endif

namespace py = pybind11;

namespace pyv4 {

namespace {

using cudamath::ActGroup;
using cudamath::Group;
using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using I32Array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

void check_x(const F32Array& x, int64_t cols, const char* what) {
  if (x.ndim() != 2 || x.shape(1) != cols)
    throw InputError(std::string(what) + ": x must be float32 [n_tokens, cols=" + std::to_string(cols) + "]");
  if (cols % cudamath::kGroup != 0)
    throw InputError(std::string(what) + ": cols must be a multiple of 32");
}

std::vector<ActGroup> quantize_rows(const F32Array& x) {
  const int64_t n = x.shape(0), groups = x.shape(1) / cudamath::kGroup;
  std::vector<ActGroup> act(static_cast<size_t>(n * groups));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t g = 0; g < groups; ++g)
      cudamath::quantize_group(x.data() + t * x.shape(1) + g * cudamath::kGroup, &act[t * groups + g]);
  return act;
}

void bind_host(py::module_& m) {
  m.def(
      "cuda_host_dequantize",
      [](const std::string& type_name, const U8Array& raw, int64_t n, const std::string& via) {
        const WeightMatrix W = make_weight(type_name, raw, 1, n);
        const bool group = via == "group";
        if (!group && via != "elem") throw InputError("via must be 'elem' or 'group'");
        if (group && !cudamath::is_group_type(W.type))
          throw InputError(std::string("cuda_host_dequantize: ") + type_name + " has no groups of 32");
        if (!cudamath::is_group_type(W.type) && !traits(W.type).is_float_weight)
          throw InputError(std::string("cuda_host_dequantize: ") + type_name + " is not a weight type");
        py::array_t<float> out(n);
        float* y = out.mutable_data();
        if (!group) {
          for (int64_t i = 0; i < n; ++i) y[i] = cudamath::load_elem(W.type, W.data, i);
          return out;
        }
        for (int64_t g = 0; g < n / cudamath::kGroup; ++g) {
          Group w;
          cudamath::load_group(W.type, W.data, g, &w);
          for (int e = 0; e < cudamath::kGroup; ++e) {
            const int code = static_cast<int8_t>(static_cast<uint32_t>(w.w[e / 4]) >> (8 * (e % 4)));
            y[g * cudamath::kGroup + e] = cudamath::mul_sub(w.d[e / 16], static_cast<float>(code), w.m[e / 16]);
          }
        }
        return out;
      },
      py::arg("type_name"), py::arg("raw"), py::arg("n"), py::arg("via") = "elem",
      "n elements decoded on the host by the GPU's decode: per element (load_elem) or from "
      "the packed codes and scales of each group of 32 (load_group).");
  m.def(
      "cuda_host_quantize_act",
      [](const F32Array& x) {
        check_x(x, x.ndim() == 2 ? x.shape(1) : -1, "cuda_host_quantize_act");
        const std::vector<ActGroup> act = quantize_rows(x);
        const int64_t n = x.shape(0), groups = x.shape(1) / cudamath::kGroup;
        py::array_t<int8_t> q({n, x.shape(1)});
        py::array_t<float> dx({n, groups});
        py::array_t<int32_t> qsum({n, groups, int64_t{2}});
        for (size_t i = 0; i < act.size(); ++i) {
          std::memcpy(q.mutable_data() + 32 * i, act[i].q, 32);
          dx.mutable_data()[i] = act[i].dx;
          qsum.mutable_data()[2 * i] = act[i].qsum[0];
          qsum.mutable_data()[2 * i + 1] = act[i].qsum[1];
        }
        return py::make_tuple(q, dx, qsum);
      },
      py::arg("x"), "(q int8 [n, cols], dx [n, cols/32], qsum [n, cols/32, 2] per half of 16): the GPU's activation quantization.");
  m.def(
      "cuda_host_gemv",
      [](const std::string& type_name, const U8Array& raw, int64_t rows, int64_t cols, const F32Array& x) {
        const WeightMatrix W = make_weight(type_name, raw, rows, cols);
        if (!cudamath::is_group_type(W.type))
          throw InputError(std::string("cuda_host_gemv: ") + type_name + " is not an integer weight type");
        check_x(x, cols, "cuda_host_gemv");
        const std::vector<ActGroup> act = quantize_rows(x);
        const int64_t n = x.shape(0), groups = cols / cudamath::kGroup;
        py::array_t<float> y({n, rows});
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t t = 0; t < n; ++t) {
            float s = 0.0f;
            for (int64_t g = 0; g < groups; ++g) {
              Group w;
              cudamath::load_group(W.type, W.row(r), g, &w);
              const ActGroup& a = act[t * groups + g];
              s += cudamath::group_dot(w, a);
            }
            y.mutable_data()[t * rows + r] = s;
          }
        }
        return y;
      },
      py::arg("type_name"), py::arg("raw"), py::arg("rows"), py::arg("cols"), py::arg("x"),
      "The integer GEMV's arithmetic (quantized activations, dp4a group dots) run serially on the host.");
  m.def(
      "cuda_host_decode_kv",
      [](const std::string& kind, const U8Array& rec, int64_t width, int64_t rope_dim) {
        const bool main = kind == "main";
        if (!main && kind != "index") throw InputError("kind must be 'main' or 'index'");
        const RowCodec c = RowCodec::make(KVType::FP8, main ? RowCodec::Kind::Main : RowCodec::Kind::Index,
                                          width, rope_dim);
        if (static_cast<size_t>(rec.size()) != c.bytes)
          throw InputError("cuda_host_decode_kv: a record of " + std::to_string(c.bytes) + " bytes");
        py::array_t<float> out(width);
        for (int64_t i = 0; i < width; ++i)
          out.mutable_data()[i] = main ? cudamath::kv_main_elem(rec.data(), width, c.nope, i)
                                       : cudamath::kv_index_elem(rec.data(), width, i);
        return out;
      },
      py::arg("kind"), py::arg("record"), py::arg("width"), py::arg("rope_dim") = 0,
      "A kv='fp8' record ('main' row or 'index' key) decoded on the host by the GPU's element decode.");
}

#ifdef PYV4_HAS_CUDA

cuda::DeviceBuffer upload(const void* p, size_t bytes) { return cuda::DeviceBuffer::from_host(p, bytes); }

py::array_t<float> download(const cuda::DeviceBuffer& b, std::vector<py::ssize_t> shape) {
  py::array_t<float> out(shape);
  b.to_host(out.mutable_data(), sizeof(float) * static_cast<size_t>(out.size()));
  return out;
}

cuda::MatmulKernel parse_kernel(const std::string& k) {
  if (k == "auto") return cuda::MatmulKernel::Auto;
  if (k == "gemv") return cuda::MatmulKernel::Gemv;
  if (k == "gemm") return cuda::MatmulKernel::Gemm;
  throw InputError("kernel must be 'auto', 'gemv' or 'gemm', not '" + k + "'");
}

// A weight uploaded once, as cuda::matmul takes it.
struct UploadedWeight {
  cuda::DeviceBuffer buf;
  cuda::DeviceMatrix W;
};

UploadedWeight upload_weight(const std::string& type_name, const U8Array& raw, int64_t rows, int64_t cols) {
  const WeightMatrix h = make_weight(type_name, raw, rows, cols);
  UploadedWeight u;
  u.buf = upload(h.data, h.row_stride * static_cast<size_t>(rows));
  u.W = h;
  u.W.data = u.buf.as<uint8_t>();
  return u;
}

// One weight product set up on the device: W and x uploaded, y allocated.
struct MatmulCall {
  MatmulCall(const std::string& type_name, const U8Array& raw, int64_t rows, int64_t cols, const F32Array& x,
             const std::string& kernel_name)
      : kernel(parse_kernel(kernel_name)) {
    if (x.ndim() != 2 || x.shape(1) != cols)
      throw InputError("x must be float32 [n_tokens, cols=" + std::to_string(cols) + "]");
    w = upload_weight(type_name, raw, rows, cols);
    n = x.shape(0);
    xd = upload(x.data(), sizeof(float) * static_cast<size_t>(x.size()));
    y = cuda::DeviceBuffer(sizeof(float) * static_cast<size_t>(n * rows));
  }
  void run() { cuda::matmul(w.W, xd.as<float>(), w.W.cols, n, y.as<float>(), w.W.rows, scratch, kernel); }

  cuda::MatmulKernel kernel;
  UploadedWeight w;
  int64_t n = 0;
  cuda::DeviceBuffer xd, y;
  cuda::MatmulScratch scratch;
};

// Device pointers of one attention call (AttendCall uploads them).
struct AttendArgs {
  const float* q;
  int64_t nh, d;
  const int32_t* idx;
  int64_t nk;
  const float* sinks;
  float *p, *out;
};

// Checks q / idx / sinks against n_rows, uploads them, runs launch, returns out [heads, dim].
template <class Launch>
py::array_t<float> attend_call(const F32Array& q, int64_t n_rows, const I32Array& idx, const F32Array& sinks,
                               Launch&& launch) {
  if (q.ndim() != 2 || idx.ndim() != 1 || sinks.ndim() != 1 || sinks.shape(0) != q.shape(0))
    throw InputError("cuda attention: q [heads, dim], idx [n] int32, sinks [heads]");
  const int64_t nh = q.shape(0), d = q.shape(1), nk = idx.shape(0);
  for (int64_t j = 0; j < nk; ++j)
    if (idx.data()[j] < 0 || idx.data()[j] >= n_rows)
      throw InputError("cuda attention: idx[" + std::to_string(j) + "] = " + std::to_string(idx.data()[j]) +
                       " is not one of the " + std::to_string(n_rows) + " rows");
  const cuda::DeviceBuffer qd = upload(q.data(), sizeof(float) * static_cast<size_t>(q.size()));
  const cuda::DeviceBuffer id = upload(idx.data(), sizeof(int32_t) * nk);
  const cuda::DeviceBuffer sd = upload(sinks.data(), sizeof(float) * nh);
  cuda::DeviceBuffer p(sizeof(float) * static_cast<size_t>(nh * nk));
  cuda::DeviceBuffer out(sizeof(float) * static_cast<size_t>(nh * d));
  launch(AttendArgs{qd.as<float>(), nh, d, id.as<int32_t>(), nk, sd.as<float>(), p.as<float>(), out.as<float>()});
  return download(out, {nh, d});
}

void bind_device(py::module_& m) {
  m.def(
      "cuda_alloc",
      [](size_t bytes) { cuda::DeviceBuffer b(bytes); },
      py::arg("bytes"), "Allocates and frees `bytes` of device memory (how CUDA errors reach Python).");
  m.def(
      "cuda_dequantize",
      [](const std::string& type_name, const U8Array& raw, int64_t rows, int64_t cols) {
        const UploadedWeight w = upload_weight(type_name, raw, rows, cols);
        cuda::DeviceBuffer y(sizeof(float) * static_cast<size_t>(rows * cols));
        cuda::dequantize(w.W, y.as<float>());
        return download(y, {rows, cols});
      },
      py::arg("type_name"), py::arg("raw"), py::arg("rows"), py::arg("cols"),
      "Every row decoded to float32 on the GPU ([rows, cols]).");
  m.def(
      "cuda_matmul",
      [](const std::string& type_name, const U8Array& raw, int64_t rows, int64_t cols, const F32Array& x,
         const std::string& kernel) {
        MatmulCall c(type_name, raw, rows, cols, x, kernel);
        c.run();
        return download(c.y, {c.n, rows});
      },
      py::arg("type_name"), py::arg("raw"), py::arg("rows"), py::arg("cols"), py::arg("x"),
      py::arg("kernel") = "auto",
      "y[n, rows] = x[n, cols] @ W.T on the GPU for raw GGML rows; kernel: auto | gemv | gemm.");
  m.def(
      "cuda_moe_matmul",
      [](const std::string& type_name, const U8Array& raw, int64_t n_expert, int64_t rows, int64_t cols,
         const F32Array& x, const I32Array& tokens, const I32Array& experts) {
        if (x.ndim() != 2 || x.shape(1) != cols || tokens.ndim() != 1 || experts.ndim() != 1 ||
            tokens.shape(0) != experts.shape(0))
          throw InputError("cuda_moe_matmul: x [n, cols], tokens [p] and experts [p] int32");
        const UploadedWeight w = upload_weight(type_name, raw, n_expert * rows, cols);
        const int64_t p = tokens.shape(0);
        const cuda::DeviceBuffer xd = upload(x.data(), sizeof(float) * static_cast<size_t>(x.size()));
        cuda::DeviceBuffer y(sizeof(float) * static_cast<size_t>(p * rows));
        cuda::MoeScratch scratch;
        cuda::moe_matmul(w.W, n_expert, xd.as<float>(), x.shape(0), tokens.data(), experts.data(), p,
                         y.as<float>(), scratch);
        return download(y, {p, rows});
      },
      py::arg("type_name"), py::arg("raw"), py::arg("n_expert"), py::arg("rows"), py::arg("cols"), py::arg("x"),
      py::arg("tokens"), py::arg("experts"),
      "Routed-expert products grouped by expert on the GPU: row i = x[tokens[i]] @ W[experts[i]].T for a "
      "stacked weight of n_expert matrices [rows, cols]; [pairs, rows].");
  m.def(
      "cuda_matmul_time",
      [](const std::string& type_name, const U8Array& raw, int64_t rows, int64_t cols, const F32Array& x,
         int reps, const std::string& kernel) {
        MatmulCall c(type_name, raw, rows, cols, x, kernel);
        return cuda::seconds_per_call([&] { c.run(); }, reps);
      },
      py::arg("type_name"), py::arg("raw"), py::arg("rows"), py::arg("cols"), py::arg("x"), py::arg("reps"),
      py::arg("kernel") = "auto", "Device seconds per cuda matmul call (weights and x already on the GPU).");
  m.def(
      "cuda_device_info",
      [] {
        const cuda::DeviceInfo d = cuda::device_info();
        py::dict out;
        out["name"] = d.name;
        out["compute_capability"] = py::make_tuple(d.cc_major, d.cc_minor);
        out["sm_count"] = d.sm_count;
        out["clock_khz"] = d.clock_khz;
        return out;
      },
      "Device 0: name, compute_capability (major, minor), sm_count, clock_khz (the SMs' peak clock).");
  m.def(
      "cuda_copy_time",
      [](int64_t nbytes, int reps) {
        if (nbytes <= 0 || reps <= 0) throw InputError("cuda_copy_time: nbytes and reps must be positive");
        return cuda::copy_seconds(static_cast<size_t>(nbytes), reps);
      },
      py::arg("nbytes"), py::arg("reps") = 10,
      "Device seconds per device-to-device copy of nbytes (it reads and writes nbytes each).");
  m.def(
      "cuda_upload_time",
      [](int64_t nbytes, int reps, int device) {
        if (nbytes <= 0 || reps <= 0) throw InputError("cuda_upload_time: nbytes and reps must be positive");
        return cuda::upload_seconds(static_cast<size_t>(nbytes), reps, device);
      },
      py::arg("nbytes"), py::arg("reps") = 5, py::arg("device") = 0,
      "Device seconds per copy of nbytes from pinned host memory to a GPU.");
  m.def(
      "cuda_rms_norm",
      [](const F32Array& x, py::object w, float eps) {
        if (x.ndim() != 2) throw InputError("cuda_rms_norm: x must be float32 [n, dim]");
        const int64_t n = x.shape(0), dim = x.shape(1);
        cuda::DeviceBuffer wd;
        if (!w.is_none()) {
          const F32Array wa = w.cast<F32Array>();
          if (wa.ndim() != 1 || wa.shape(0) != dim) throw InputError("cuda_rms_norm: w must be float32 [dim]");
          wd = upload(wa.data(), sizeof(float) * dim);
        }
        const cuda::DeviceBuffer xd = upload(x.data(), sizeof(float) * static_cast<size_t>(x.size()));
        cuda::DeviceBuffer y(sizeof(float) * static_cast<size_t>(x.size()));
        cuda::rms_norm(xd.as<float>(), w.is_none() ? nullptr : wd.as<float>(), y.as<float>(), n, dim, eps);
        return download(y, {n, dim});
      },
      py::arg("x"), py::arg("w"), py::arg("eps"));
  m.def(
      "cuda_rope",
      [](const F32Array& v, const I64Array& pos, const F32Array& inv_freq, bool inverse) {
        if (v.ndim() != 2 || pos.ndim() != 1 || pos.shape(0) != v.shape(0) || inv_freq.ndim() != 1 ||
            2 * inv_freq.shape(0) > v.shape(1))
          throw InputError("cuda_rope: v [n, width], pos [n], inv_freq [half] with 2 * half <= width");
        const int64_t n = v.shape(0), width = v.shape(1), half = inv_freq.shape(0);
        cuda::DeviceBuffer vd = upload(v.data(), sizeof(float) * static_cast<size_t>(v.size()));
        const cuda::DeviceBuffer pd = upload(pos.data(), sizeof(int64_t) * n);
        const cuda::DeviceBuffer fd = upload(inv_freq.data(), sizeof(float) * half);
        cuda::rope(vd.as<float>(), n, width, pd.as<int64_t>(), fd.as<float>(), half, inverse);
        return download(vd, {n, width});
      },
      py::arg("v"), py::arg("pos"), py::arg("inv_freq"), py::arg("inverse") = false);
  m.def(
      "cuda_swiglu",
      [](const F32Array& g, const F32Array& u, float limit) {
        if (g.ndim() != 1 || u.ndim() != 1 || g.shape(0) != u.shape(0))
          throw InputError("cuda_swiglu: g and u float32 [n]");
        const int64_t n = g.shape(0);
        const cuda::DeviceBuffer gd = upload(g.data(), sizeof(float) * n), ud = upload(u.data(), sizeof(float) * n);
        cuda::DeviceBuffer h(sizeof(float) * n);
        cuda::swiglu(gd.as<float>(), ud.as<float>(), h.as<float>(), n, limit);
        return download(h, {n});
      },
      py::arg("g"), py::arg("u"), py::arg("limit"));
  m.def(
      "cuda_attend",
      [](const F32Array& q, const F32Array& rows, const I32Array& idx, const F32Array& sinks, float scale) {
        if (rows.ndim() != 2 || q.ndim() != 2 || rows.shape(1) != q.shape(1))
          throw InputError("cuda_attend: rows [N, dim] with q's dim");
        const cuda::DeviceBuffer rd = upload(rows.data(), sizeof(float) * static_cast<size_t>(rows.size()));
        return attend_call(q, rows.shape(0), idx, sinks, [&](const AttendArgs& a) {
          cuda::attend(a.q, a.nh, a.d, rd.as<float>(), a.idx, a.nk, a.sinks, scale, a.p, a.out);
        });
      },
      py::arg("q"), py::arg("rows"), py::arg("idx"), py::arg("sinks"), py::arg("scale"),
      "Sink-softmax attention of q's heads over rows[idx] on the GPU ([heads, dim]).");
  m.def(
      "cuda_attend_fp8",
      [](const F32Array& q, const U8Array& recs, const I32Array& idx, const F32Array& sinks, float scale,
         int64_t rope_dim) {
        if (q.ndim() != 2 || rope_dim < 0 || rope_dim > q.shape(1))
          throw InputError("cuda_attend_fp8: q [heads, dim], 0 <= rope_dim <= dim");
        const RowCodec c = RowCodec::make(KVType::FP8, RowCodec::Kind::Main, q.shape(1), rope_dim);
        if (recs.ndim() != 2 || static_cast<size_t>(recs.shape(1)) != c.bytes)
          throw InputError("cuda_attend_fp8: records [N, " + std::to_string(c.bytes) + "] uint8");
        const cuda::DeviceBuffer rd = upload(recs.data(), static_cast<size_t>(recs.size()));
        return attend_call(q, recs.shape(0), idx, sinks, [&](const AttendArgs& a) {
          cuda::attend_fp8(a.q, a.nh, a.d, c.nope, rd.as<uint8_t>(), c.bytes, a.idx, a.nk, a.sinks, scale, a.p,
                           a.out);
        });
      },
      py::arg("q"), py::arg("records"), py::arg("idx"), py::arg("sinks"), py::arg("scale"), py::arg("rope_dim"),
      "cuda_attend over main KV records of kv='fp8' (RowCodec bytes each), decoded on the GPU.");
  m.def(
      "cuda_attend_records",
      [](const F32Array& q, const std::string& kv, const U8Array& recs, const I64Array& order, const I32Array& idx,
         const F32Array& sinks, float scale, int64_t rope_dim) {
        if (q.ndim() != 2 || rope_dim < 0 || rope_dim > q.shape(1))
          throw InputError("cuda_attend_records: q [heads, dim], 0 <= rope_dim <= dim");
        const RowCodec c = RowCodec::make(parse_kv_type(kv), RowCodec::Kind::Main, q.shape(1), rope_dim);
        if (recs.ndim() != 2 || static_cast<size_t>(recs.shape(1)) != c.bytes)
          throw InputError("cuda_attend_records: records [N, " + std::to_string(c.bytes) + "] uint8");
        // row r is the record order[r] of the uploaded block: the kernel follows addresses, not positions
        const cuda::DeviceBuffer rd = upload(recs.data(), static_cast<size_t>(recs.size()));
        std::vector<const uint8_t*> addr(order.size());
        for (int64_t r = 0; r < order.size(); ++r) {
          if (order.data()[r] < 0 || order.data()[r] >= recs.shape(0))
            throw InputError("cuda_attend_records: order out of range");
          addr[r] = rd.as<uint8_t>() + static_cast<size_t>(order.data()[r]) * c.bytes;
        }
        const cuda::DeviceBuffer ad = upload(addr.data(), sizeof(void*) * std::max<size_t>(addr.size(), 1));
        return attend_call(q, order.size(), idx, sinks, [&](const AttendArgs& a) {
          cuda::attend_records(a.q, a.nh, a.d, c.type, c.nope, ad.as<const uint8_t*>(), a.idx, a.nk, a.sinks, scale,
                               a.p, a.out);
        });
      },
      py::arg("q"), py::arg("kv"), py::arg("records"), py::arg("order"), py::arg("idx"), py::arg("sinks"),
      py::arg("scale"), py::arg("rope_dim"),
      "cuda_attend over main KV records of any type reached through a table of device addresses: row r is "
      "records[order[r]].");
  m.def(
      "cuda_index_scores_fp4",
      [](const F32Array& q, const F32Array& w, const U8Array& keys) {
        if (q.ndim() != 2 || w.ndim() != 1 || w.shape(0) != q.shape(0) || keys.ndim() != 2)
          throw InputError("cuda_index_scores_fp4: q [heads, dim], w [heads], keys [n, record bytes]");
        const int64_t nih = q.shape(0), dim = q.shape(1), n = keys.shape(0);
        if (dim % 32 != 0 || dim > 512) throw InputError("cuda_index_scores_fp4: dim a multiple of 32, <= 512");
        const RowCodec c = RowCodec::make(KVType::FP8, RowCodec::Kind::Index, dim, 0);
        if (static_cast<size_t>(keys.shape(1)) != c.bytes)
          throw InputError("cuda_index_scores_fp4: key records of " + std::to_string(c.bytes) + " bytes");
        const cuda::DeviceBuffer qd = upload(q.data(), sizeof(float) * static_cast<size_t>(q.size()));
        const cuda::DeviceBuffer wd = upload(w.data(), sizeof(float) * nih);
        const cuda::DeviceBuffer kd = upload(keys.data(), static_cast<size_t>(keys.size()));
        cuda::DeviceBuffer out(sizeof(float) * static_cast<size_t>(n));
        cuda::index_scores_fp4(qd.as<float>(), wd.as<float>(), nih, dim, kd.as<uint8_t>(), c.bytes, n,
                               out.as<float>());
        return download(out, {n});
      },
      py::arg("q"), py::arg("w"), py::arg("keys"),
      "Indexer scores of q's heads against FP4 key records of kv='fp8' on the GPU ([n]).");
  m.def(
      "cuda_kv_encode",
      [](const std::string& kind, const F32Array& rows, int64_t rope_dim, const std::string& kv) {
        const bool index = kind == "index";
        if (!index && kind != "main") throw InputError("kind must be 'main' or 'index'");
        if (rows.ndim() != 2) throw InputError("cuda_kv_encode: rows float32 [n, width]");
        const int64_t n = rows.shape(0), width = rows.shape(1);
        if (rope_dim < 0 || rope_dim > width) throw InputError("cuda_kv_encode: 0 <= rope_dim <= width");
        const RowCodec c = RowCodec::make(parse_kv_type(kv), index ? RowCodec::Kind::Index : RowCodec::Kind::Main,
                                          width, rope_dim);
        cuda::DeviceBuffer xd = upload(rows.data(), sizeof(float) * static_cast<size_t>(rows.size()));
        cuda::DeviceBuffer rd(c.bytes * static_cast<size_t>(n));
        cuda::kv_encode(c.type, xd.as<float>(), n, width, c.nope, index, rd.as<uint8_t>(), c.bytes);
        py::array_t<uint8_t> recs({n, static_cast<int64_t>(c.bytes)});
        rd.to_host(recs.mutable_data(), c.bytes * static_cast<size_t>(n));
        return py::make_tuple(download(xd, {n, width}), recs);
      },
      py::arg("kind"), py::arg("rows"), py::arg("rope_dim") = 0, py::arg("kv") = "fp8",
      "The KV type's rounding and records on the GPU (kv 'f32' | 'bf16' | 'fp8'): (rows rounded [n, width], "
      "records [n, bytes]).");
  m.def(
      "cuda_hc_pre",
      [](const F32Array& fn, const F32Array& base, const F32Array& scale, const F32Array& X, int64_t iters,
         float hc_eps, float rms_eps) {
        const int64_t M = 24, D = check_hc(fn, M, base, X, "cuda_hc_pre"), n = X.shape(0);
        if (scale.ndim() != 1 || scale.shape(0) != 3) throw InputError("cuda_hc_pre: scale must be float32 [3]");
        const UploadedWeight w = upload_weight("F32", U8Array(py::array(fn).attr("view")("uint8")), M, 4 * D);
        const cuda::DeviceBuffer bd = upload(base.data(), sizeof(float) * M), sd = upload(scale.data(), 12);
        const cuda::DeviceBuffer xd = upload(X.data(), sizeof(float) * static_cast<size_t>(X.size()));
        cuda::DeviceBuffer y(sizeof(float) * n * D), post(sizeof(float) * n * 4), comb(sizeof(float) * n * 16),
            mu(sizeof(float) * n * M), pre(sizeof(float) * n * 4);
        cuda::MatmulScratch scratch;
        cuda::hc_pre(w.W, bd.as<float>(), sd.as<float>(), xd.as<float>(), n, D, iters, hc_eps, rms_eps, y.as<float>(),
                     post.as<float>(), comb.as<float>(), mu.as<float>(), pre.as<float>(), scratch);
        return py::make_tuple(download(y, {n, D}), download(post, {n, 4}), download(comb, {n, 4, 4}));
      },
      py::arg("fn"), py::arg("base"), py::arg("scale"), py::arg("X"), py::arg("iters"), py::arg("hc_eps"),
      py::arg("rms_eps"), "ops_hc_pre on the GPU: (y [n, D], post [n, 4], comb [n, 4, 4]).");
  m.def(
      "cuda_hc_post",
      [](const F32Array& post, const F32Array& comb, const F32Array& f, const F32Array& X) {
        check_hc_post(post, comb, f, X, "cuda_hc_post");
        const int64_t n = X.shape(0), D = f.shape(1);
        const cuda::DeviceBuffer pd = upload(post.data(), sizeof(float) * n * 4),
                                 cd = upload(comb.data(), sizeof(float) * n * 16),
                                 fd = upload(f.data(), sizeof(float) * n * D);
        cuda::DeviceBuffer xd = upload(X.data(), sizeof(float) * n * 4 * D);
        cuda::hc_post(pd.as<float>(), cd.as<float>(), fd.as<float>(), xd.as<float>(), n, D);
        return download(xd, {n, 4 * D});
      },
      py::arg("post"), py::arg("comb"), py::arg("f"), py::arg("X"), "ops_hc_post on the GPU: X' [n, 4*D].");
  m.def(
      "cuda_hc_head",
      [](const F32Array& fn, const F32Array& base, float scale, const F32Array& X, float hc_eps, float rms_eps) {
        const int64_t D = check_hc(fn, 4, base, X, "cuda_hc_head"), n = X.shape(0);
        const UploadedWeight w = upload_weight("F32", U8Array(py::array(fn).attr("view")("uint8")), 4, 4 * D);
        const cuda::DeviceBuffer bd = upload(base.data(), sizeof(float) * 4);
        const cuda::DeviceBuffer xd = upload(X.data(), sizeof(float) * static_cast<size_t>(X.size()));
        cuda::DeviceBuffer y(sizeof(float) * n * D), mu(sizeof(float) * n * 4), pre(sizeof(float) * n * 4);
        cuda::MatmulScratch scratch;
        cuda::hc_head(w.W, bd.as<float>(), scale, xd.as<float>(), n, D, hc_eps, rms_eps, y.as<float>(),
                      mu.as<float>(), pre.as<float>(), scratch);
        return download(y, {n, D});
      },
      py::arg("fn"), py::arg("base"), py::arg("scale"), py::arg("X"), py::arg("hc_eps"), py::arg("rms_eps"),
      "ops_hc_head on the GPU: y [n, D].");
  m.def(
      "cuda_compressor_pool",
      [](const F32Array& kv, const F32Array& gate, int64_t tail_start, int64_t b, int64_t ratio, int64_t width,
         bool overlap) {
        check_pool(kv, gate, tail_start, b, ratio, width, overlap);
        const cuda::DeviceBuffer kd = upload(kv.data(), sizeof(float) * static_cast<size_t>(kv.size()));
        const cuda::DeviceBuffer gd = upload(gate.data(), sizeof(float) * static_cast<size_t>(gate.size()));
        cuda::DeviceBuffer row(sizeof(float) * width);
        cuda::compressor_pool(kd.as<float>(), gd.as<float>(), tail_start, kv.shape(1), b, ratio, width, overlap,
                              row.as<float>());
        return download(row, {width});
      },
      py::arg("kv"), py::arg("gate"), py::arg("tail_start"), py::arg("b"), py::arg("ratio"), py::arg("width"),
      py::arg("overlap"), "ops_compressor_pool on the GPU: [width].");
  m.def(
      "cuda_topk",
      [](const F32Array& scores, int64_t k) {
        if (scores.ndim() != 2 || k < 0) throw InputError("cuda_topk: scores float32 [m, n], k >= 0");
        const int64_t m = scores.shape(0), n = scores.shape(1), kk = std::min(k, n);
        const cuda::DeviceBuffer sd = upload(scores.data(), sizeof(float) * static_cast<size_t>(scores.size()));
        cuda::DeviceBuffer od(sizeof(int64_t) * static_cast<size_t>(m * kk));
        cuda::topk(sd.as<float>(), m, n, k, od.as<int64_t>());
        py::array_t<int64_t> out({m, kk});
        od.to_host(out.mutable_data(), sizeof(int64_t) * static_cast<size_t>(m * kk));
        return out;
      },
      py::arg("scores"), py::arg("k"),
      "select_topk of each row of scores on the GPU: [m, min(k, n)] indices in row order.");
}

#endif  // PYV4_HAS_CUDA

}  // namespace

void bind_cuda(py::module_& m) {
  m.def(
      "cuda_available",
      [] {
#ifdef PYV4_HAS_CUDA
        const cuda::Status& s = cuda::status();
        return py::make_tuple(s.ok, s.reason);
#else
        return py::make_tuple(false, std::string("built without CUDA"));
#endif
      },
      "(True, device) if a CUDA device can be used, else (False, why not).");
  m.def(
      "cuda_device_count",
      [] {
#ifdef PYV4_HAS_CUDA
        return cuda::device_count();
#else
        return 0;
#endif
      },
      "CUDA devices this process can use (0 without a usable one or a CUDA build).");
  m.attr("cuda_built") = py::bool_(
#ifdef PYV4_HAS_CUDA
      true
#else
      false
#endif
  );
  bind_host(m);
#ifdef PYV4_HAS_CUDA
  bind_device(m);
#endif
}

}  // namespace pyv4
