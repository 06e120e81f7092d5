// The model's tensors, bound by name from the GGUF (llama.cpp `deepseek4`
// names, spec §10) and checked against the config once at load: every later
// access is a plain pointer. Large matrices stay in the mmap, or are copied
// once into the split layout (quant/split_layout.h); small vectors (norms,
// biases, mHC base/scale, sinks, ape) are decoded to fp32 here.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "model/config.h"
#include "quant/matmul.h"

namespace pyv4 {

class GGUFFile;

using Vec = std::vector<float>;

struct HyperConnWeights {  // one mHC site (spec §3.3)
  WeightMatrix fn;         // [mix, hc*D]
  Vec base;                // [mix]
  Vec scale;               // [3]
};

struct CompressorWeights {  // spec §3.5 / §3.6
  WeightMatrix kv, gate;    // [coff*width, D]
  Vec ape;                  // [ratio, coff*width] row-major
  Vec norm;                 // [width]
  int64_t ratio = 0, width = 0;
  bool overlap = false;     // CSA: two series, 2*ratio-slot pools
};

struct LayerWeights {
  AttnKind kind = AttnKind::Sliding;
  Vec attn_norm, ffn_norm;
  HyperConnWeights hc_attn, hc_ffn;
  Vec sinks;                      // [H]
  WeightMatrix wq_a, wq_b, wkv;   // [q_lora, D], [H*d, q_lora], [d, D]
  Vec q_norm, kv_norm;            // [q_lora], [d]
  WeightMatrix wo_a, wo_b;        // [G*o_lora, H*d/G], [D, G*o_lora]
  CompressorWeights comp;         // CSA / HCA
  CompressorWeights index_comp;   // CSA only
  WeightMatrix index_q_b, index_proj;  // [nih*ihd, q_lora], [nih, D]
  WeightMatrix router;            // [E, D]
  const int32_t* tid2eid = nullptr;  // [vocab, k] for hash layers
  Vec router_bias;                // [E] for score-routed layers
  WeightMatrix gate_exps, up_exps, down_exps;  // [E*F, D], [E*F, D], [E*D, F]
  WeightMatrix gate_sh, up_sh, down_sh;        // [F, D], [F, D], [D, F]
  bool has_shared = false;

  // Every weight matrix above, for passes over all of them (the split copies
  // at load): a matrix member added to this struct belongs here too.
  std::array<WeightMatrix*, 20> matrices() {
    return {&hc_attn.fn, &hc_ffn.fn, &wq_a, &wq_b, &wkv, &wo_a, &wo_b, &comp.kv, &comp.gate,
            &index_comp.kv, &index_comp.gate, &index_q_b, &index_proj, &router, &gate_exps,
            &up_exps, &down_exps, &gate_sh, &up_sh, &down_sh};
  }
  // Their GGUF names after "blk.N." (spec §10), in the same order.
  static constexpr std::array<const char*, 20> kMatrixNames = {
      "hc_attn_fn.weight", "hc_ffn_fn.weight", "attn_q_a.weight", "attn_q_b.weight",
      "attn_kv.weight", "attn_output_a.weight", "attn_output_b.weight",
      "attn_compressor_kv.weight", "attn_compressor_gate.weight", "indexer_compressor_kv.weight",
      "indexer_compressor_gate.weight", "indexer.attn_q_b.weight", "indexer.proj.weight",
      "ffn_gate_inp.weight", "ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight",
      "ffn_gate_shexp.weight", "ffn_up_shexp.weight", "ffn_down_shexp.weight"};
};

struct ModelWeights {
  WeightMatrix tok_embd, output;  // [V, D]
  Vec output_norm;                // [D]
  WeightMatrix hc_head_fn;        // [hc, hc*D]
  Vec hc_head_base, hc_head_scale;
  std::vector<LayerWeights> layers;
  std::vector<std::shared_ptr<uint8_t>> split_copies;  // owners of the split matrices

  // Binds and validates every tensor of the main model (MTP tensors are
  // left for the MTP path). Sets cfg.n_vocab from token_embd if unset. Then,
  // if split and the AVX-512 kernels are active, copies every matrix that has
  // a split form (quant/split_layout.h) into it, except token_embd (only read
  // a row at a time), if all the copies fit in memory (policy in weights.cpp),
  // and drops the file's pages under the copied tensors: after load nothing
  // reads those bytes of the file again.
  // The copies run on pool's threads.
  static ModelWeights load(const GGUFFile& f, ModelConfig& cfg, bool split, ThreadPool& pool);
};

}  // namespace pyv4
