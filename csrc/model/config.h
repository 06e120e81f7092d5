// DeepSeek-V4 hyper-parameters, read once from a `deepseek4` GGUF's metadata
// (llama.cpp key names, spec §10) and validated; fixed for the model's lifetime.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace pyv4 {

class GGUFFile;

enum class AttnKind { Sliding, CSA, HCA };  // compress ratio 0, 4, 128 (spec §1.2)

struct ModelConfig {
  int64_t n_vocab = 0;
  int64_t n_ctx = 0;          // context_length
  int64_t n_embd = 0;         // D
  int64_t n_layer = 0;        // main decoder layers (block_count minus MTP layers)
  int64_t n_layer_mtp = 0;    // nextn_predict_layers
  int64_t n_head = 0;         // H
  int64_t head_dim = 0;       // d (K = V, one shared KV head)
  int64_t rope_dim = 0;       // r: the last r dims of a head are rotated
  int64_t q_lora_rank = 0;
  int64_t o_groups = 0;
  int64_t o_lora_rank = 0;
  int64_t window = 0;         // sliding_window
  std::vector<int64_t> compress_ratio;  // per layer (main + MTP): 0, 4 or 128
  double rope_theta = 10000.0;
  double compress_rope_theta = 160000.0;
  // YaRN on compressed layers (spec §2); factor <= 1 disables it.
  double yarn_factor = 1.0;
  int64_t yarn_orig_ctx = 0;
  double yarn_beta_fast = 32.0, yarn_beta_slow = 1.0;
  int64_t index_n_head = 0, index_head_dim = 0, index_topk = 0;
  int64_t n_expert = 0, n_expert_used = 0, n_ff_exp = 0, n_expert_shared = 0;
  double routed_scale = 1.0;
  bool norm_topk = true;
  std::vector<double> swiglu_limit;         // routed experts, per layer (0: no clamp)
  std::vector<double> swiglu_limit_shared;  // shared expert, per layer
  int64_t n_hash_layers = 0;
  int64_t hc_mult = 4;
  int64_t hc_sinkhorn_iters = 20;
  double hc_eps = 1e-6;
  double rms_eps = 1e-6;
  int64_t bos_id = 0, eos_id = 1;

  AttnKind kind(int64_t layer) const {
    const int64_t r = compress_ratio[layer];
    return r == 0 ? AttnKind::Sliding : (r == 4 ? AttnKind::CSA : AttnKind::HCA);
  }
  int64_t hc_mix() const { return (2 + hc_mult) * hc_mult; }

  // Reads and validates; throws FormatError naming the key and the problem.
  static ModelConfig from_gguf(const GGUFFile& f);
};

}  // namespace pyv4
