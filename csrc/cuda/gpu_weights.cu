// Upload of the model's weights for the GPU path (contract in cuda/gpu_weights.h).
#include "cuda/gpu_weights.h"

#include <algorithm>
#include <string>

#include "common/error.h"
#include "quant/split_layout.h"

namespace pyv4 {
namespace cuda {

namespace {

// A device copy of h in GGML rows (append_ggml_rows).
DevMat upload(const WeightMatrix& h, const std::string& name, size_t& bytes) {
  if (!multiplies(h.type))
    throw InputError("GPU path: " + name + " is " + type_name(h.type) +
                     ", a type the GPU kernels do not multiply (cuda/matmul.h lists them)");
  const size_t rb = row_bytes(h.type, h.cols, name);
  std::vector<uint8_t> staging;
  const uint8_t* src = h.data;  // packed GGML rows are uploaded in place
  if (h.split || h.row_stride != rb) {
    append_ggml_rows(h, staging);
    src = staging.data();
  }
  DevMat m;
  m.buf = DeviceBuffer::from_host(src, rb * static_cast<size_t>(h.rows));
  m.W = h;
  m.W.data = m.buf.as<uint8_t>();
  m.W.row_stride = rb;
  m.W.split = false;
  bytes += m.buf.size();
  return m;
}

DeviceBuffer upload_vec(const std::vector<float>& v, size_t& bytes) {
  bytes += sizeof(float) * v.size();
  return DeviceBuffer::from_host(v.data(), sizeof(float) * v.size());
}

DevHyperConn upload_hc(const HyperConnWeights& h, const std::string& name, size_t& bytes) {
  DevHyperConn d;
  d.fn = upload(h.fn, name + "_fn.weight", bytes);
  d.base = upload_vec(h.base, bytes);
  d.scale = upload_vec(h.scale, bytes);
  return d;
}

}  // namespace

void append_ggml_rows(const WeightMatrix& W, std::vector<uint8_t>& out) {
  const size_t rb = row_bytes(W.type, W.cols);
  const size_t at = out.size();
  out.resize(at + rb * static_cast<size_t>(W.rows));
  for (int64_t r = 0; r < W.rows; ++r) {
    uint8_t* dst = &out[at + r * rb];
    if (W.split)
      split::unsplit_row(W.type, W.cols, W.row(r), dst);
    else
      std::copy_n(W.row(r), rb, dst);
  }
}

DevModel upload_model(const ModelConfig& c, const ModelWeights& w, const std::vector<const std::vector<float>*>& rope,
                      const ExpertRanges& experts) {
  if (static_cast<int64_t>(experts.size()) != c.n_layer)
    throw InputError("GPU path: expert ranges for " + std::to_string(experts.size()) + " layers, the model has " +
                     std::to_string(c.n_layer));
  DevModel m;
  size_t& b = m.bytes;
  m.output = upload(w.output, "output.weight", b);
  m.hc_head_fn = upload(w.hc_head_fn, "output_hc_fn.weight", b);
  m.output_norm = upload_vec(w.output_norm, b);
  m.hc_head_base = upload_vec(w.hc_head_base, b);
  const int64_t F = c.n_ff_exp, D = c.n_embd;
  for (int64_t il = 0; il < c.n_layer; ++il) {
    const LayerWeights& L = w.layers[il];
    const std::string p = "blk." + std::to_string(il) + ".";
    DevLayer d;
    d.hc_attn = upload_hc(L.hc_attn, p + "hc_attn", b);
    d.hc_ffn = upload_hc(L.hc_ffn, p + "hc_ffn", b);
    d.attn_norm = upload_vec(L.attn_norm, b);
    d.ffn_norm = upload_vec(L.ffn_norm, b);
    d.q_norm = upload_vec(L.q_norm, b);
    d.kv_norm = upload_vec(L.kv_norm, b);
    d.sinks = upload_vec(L.sinks, b);
    d.inv_freq = upload_vec(*rope[il], b);
    d.wq_a = upload(L.wq_a, p + "attn_q_a.weight", b);
    d.wq_b = upload(L.wq_b, p + "attn_q_b.weight", b);
    d.wkv = upload(L.wkv, p + "attn_kv.weight", b);
    d.wo_a = upload(L.wo_a, p + "attn_output_a.weight", b);
    d.wo_b = upload(L.wo_b, p + "attn_output_b.weight", b);
    if (L.kind != AttnKind::Sliding) {
      d.comp_kv = upload(L.comp.kv, p + "attn_compressor_kv.weight", b);
      d.comp_gate = upload(L.comp.gate, p + "attn_compressor_gate.weight", b);
    }
    if (L.kind == AttnKind::CSA) {
      d.index_comp_kv = upload(L.index_comp.kv, p + "indexer_compressor_kv.weight", b);
      d.index_comp_gate = upload(L.index_comp.gate, p + "indexer_compressor_gate.weight", b);
      d.index_q_b = upload(L.index_q_b, p + "indexer.attn_q_b.weight", b);
      d.index_proj = upload(L.index_proj, p + "indexer.proj.weight", b);
    }
    d.router = upload(L.router, p + "ffn_gate_inp.weight", b);
    if (L.has_shared) {
      d.gate_sh = upload(L.gate_sh, p + "ffn_gate_shexp.weight", b);
      d.up_sh = upload(L.up_sh, p + "ffn_up_shexp.weight", b);
      d.down_sh = upload(L.down_sh, p + "ffn_down_shexp.weight", b);
    }
    std::vector<std::pair<int64_t, int64_t>> ranges = experts[il];
    std::sort(ranges.begin(), ranges.end());
    for (size_t r = 0; r < ranges.size(); ++r) {
      const auto [first, end] = ranges[r];
      if (first < 0 || end > c.n_expert || first >= end || (r > 0 && first < ranges[r - 1].second))
        throw InputError("GPU path: layer " + std::to_string(il) + ": expert range [" + std::to_string(first) + ", " +
                         std::to_string(end) + ") is empty, overlaps another or is outside [0, " +
                         std::to_string(c.n_expert) + ")");
      DevExperts e;
      e.first = first;
      e.end = end;
      const int64_t k = end - first;
      e.gate = upload(L.gate_exps.row_slice(first * F, k * F), p + "ffn_gate_exps.weight", b);
      e.up = upload(L.up_exps.row_slice(first * F, k * F), p + "ffn_up_exps.weight", b);
      e.down = upload(L.down_exps.row_slice(first * D, k * D), p + "ffn_down_exps.weight", b);
      d.experts.push_back(std::move(e));
    }
    m.layers.push_back(std::move(d));
  }
  return m;
}

}  // namespace cuda
}  // namespace pyv4
