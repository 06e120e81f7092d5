// The model's weights in device memory for the GPU path (csrc/cuda/gpu_engine.*):
// every matrix in GGML rows (cuda::matmul's input; split copies restored
// row by row), small vectors as fp32. Plain C++ (csrc/cuda/gpu_weights.cu).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cuda/buffer.h"
#include "cuda/matmul.h"
#include "model/weights.h"

namespace pyv4 {
namespace cuda {

// One matrix: its device copy and the view cuda::matmul takes.
struct DevMat {
  DeviceBuffer buf;
  DeviceMatrix W;
};

// Routed experts [first, end) of one layer: row slices of the stacked tensors.
struct DevExperts {
  int64_t first = 0, end = 0;
  DevMat gate, up, down;
};

struct DevHyperConn {
  DevMat fn;
  DeviceBuffer base, scale;
};

struct DevLayer {
  DevHyperConn hc_attn, hc_ffn;
  DeviceBuffer attn_norm, ffn_norm, q_norm, kv_norm, sinks;
  DeviceBuffer inv_freq;  // the layer's RoPE table (RopeTable::inv_freq)
  DevMat wq_a, wq_b, wkv, wo_a, wo_b;
  DevMat comp_kv, comp_gate, index_comp_kv, index_comp_gate, index_q_b, index_proj;
  DevMat router, gate_sh, up_sh, down_sh;
  std::vector<DevExperts> experts;  // the ranges placed on the GPU, by first expert
};

struct DevModel {
  std::vector<DevLayer> layers;
  DevMat output, hc_head_fn;
  DeviceBuffer output_norm, hc_head_base;
  size_t bytes = 0;  // device memory held
};

// Appends W's rows in GGML layout to out (split rows restored, rows packed):
// the bytes cuda::matmul reads.
void append_ggml_rows(const WeightMatrix& W, std::vector<uint8_t>& out);

// (first, end) ranges of routed experts on the GPU, per layer.
using ExpertRanges = std::vector<std::vector<std::pair<int64_t, int64_t>>>;

// Uploads w (rope: each layer's table). InputError names a matrix whose type
// the GPU does not multiply, or a range outside [0, n_expert) / overlapping.
DevModel upload_model(const ModelConfig& c, const ModelWeights& w, const std::vector<const std::vector<float>*>& rope,
                      const ExpertRanges& experts);

}  // namespace cuda
}  // namespace pyv4
