// Each concern registers its own Python bindings into pyv4._core.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "quant/matmul.h"

namespace pyv4 {
void bind_gguf(pybind11::module_& m);
void bind_model(pybind11::module_& m);
void bind_quant(pybind11::module_& m);
void bind_session(pybind11::module_& m);  // after bind_model (uses Engine)
void bind_sample(pybind11::module_& m);
void bind_ops(pybind11::module_& m);
void bind_cuda(pybind11::module_& m);
void bind_gpu_model(pybind11::module_& m);  // after bind_model (uses Engine)

// Shared by the kernel bindings (bind_quant.cpp, bind_cuda.cpp).
using U8Array = pybind11::array_t<uint8_t, pybind11::array::c_style | pybind11::array::forcecast>;
using F32Array = pybind11::array_t<float, pybind11::array::c_style | pybind11::array::forcecast>;
// The GGML type of a name ("Q4_K", ...); InputError if unknown.
GGMLType type_from_name(const std::string& name);
// A [rows, cols] view of raw GGML rows; InputError if raw is too small.
WeightMatrix make_weight(const std::string& type_name, const U8Array& raw, int64_t rows, int64_t cols);

// Input checks shared by the CPU (bind_ops.cpp) and GPU (bind_cuda.cpp)
// bindings of one op, each raising InputError. An mHC site: fn float32
// [mix_rows, 4·D], base [mix_rows], X [n, 4·D]; returns D.
int64_t check_hc(const F32Array& fn, int64_t mix_rows, const F32Array& base, const F32Array& X, const char* what);
// hc_post: post [n, 4], comb [n, 4, 4], f [n, D], X [n, 4·D].
void check_hc_post(const F32Array& post, const F32Array& comb, const F32Array& f, const F32Array& X,
                   const char* what);
// A compressor block's pooling: kv and gate [tail_len, pw] covering the slots
// of block b (ratio, width, overlap) from position tail_start.
void check_pool(const F32Array& kv, const F32Array& gate, int64_t tail_start, int64_t b, int64_t ratio,
                int64_t width, bool overlap);
}  // namespace pyv4
