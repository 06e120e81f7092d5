#include "model/config.h"

#include "common/error.h"
#include "gguf/gguf_file.h"

namespace pyv4 {

namespace {

constexpr const char* kArch = "deepseek4";

class KeyReader {
 public:
  explicit KeyReader(const GGUFFile& f) : f_(f) {}

  const GGUFValue* find(const std::string& k) const { return f_.find(std::string(kArch) + "." + k); }

  [[noreturn]] void fail(const std::string& k, const std::string& why) const {
    throw FormatError(f_.path() + ": metadata key '" + kArch + "." + k + "' " + why);
  }
  int64_t i(const std::string& k) const {
    const GGUFValue* v = find(k);
    if (!v) fail(k, "is missing");
    if (!v->is_integer()) fail(k, "must be an integer");
    return v->i;
  }
  int64_t i(const std::string& k, int64_t dflt) const { return find(k) ? i(k) : dflt; }
  double f(const std::string& k) const {
    const GGUFValue* v = find(k);
    if (!v) fail(k, "is missing");
    if (!v->is_number()) fail(k, "must be a number");
    return v->as_double();
  }
  double f(const std::string& k, double dflt) const { return find(k) ? f(k) : dflt; }
  // A per-layer array, or a scalar broadcast to every layer.
  std::vector<double> per_layer(const std::string& k, int64_t n, double dflt) const {
    const GGUFValue* v = find(k);
    if (!v) return std::vector<double>(n, dflt);
    if (!v->is_array()) {
      if (!v->is_number()) fail(k, "must be a number or an array of numbers");
      return std::vector<double>(n, v->as_double());
    }
    std::vector<double> out;
    for (int64_t x : v->ai) out.push_back(static_cast<double>(x));
    for (double x : v->af) out.push_back(x);
    if (static_cast<int64_t>(out.size()) < n) {
      fail(k, "has " + std::to_string(out.size()) + " entries, need " + std::to_string(n));
    }
    out.resize(n);
    return out;
  }
  void require(bool ok, const std::string& k, const std::string& why) const {
    if (!ok) fail(k, why);
  }

 private:
  const GGUFFile& f_;
};

}  // namespace

ModelConfig ModelConfig::from_gguf(const GGUFFile& f) {
  const GGUFValue* arch = f.find("general.architecture");
  if (!arch || arch->type != GGUFType::STRING) {
    throw FormatError(f.path() + ": general.architecture is missing; not a model GGUF");
  }
  if (arch->s != kArch) {
    throw FormatError(f.path() + ": wrong architecture '" + arch->s +
                      "' (pyv4 runs DeepSeek-V4 files, architecture 'deepseek4')");
  }
  KeyReader k(f);
  ModelConfig c;
  const int64_t n_block = k.i("block_count");
  c.n_layer_mtp = k.i("nextn_predict_layers", 0);
  c.n_layer = n_block - c.n_layer_mtp;
  k.require(c.n_layer >= 1 && c.n_layer_mtp >= 0, "block_count",
            "must exceed nextn_predict_layers");
  c.n_ctx = k.i("context_length");
  c.n_embd = k.i("embedding_length");
  c.n_head = k.i("attention.head_count");
  const int64_t n_head_kv = k.i("attention.head_count_kv", 1);
  k.require(n_head_kv == 1, "attention.head_count_kv", "must be 1 (one shared K=V head)");
  c.head_dim = k.i("attention.key_length");
  k.require(k.i("attention.value_length", c.head_dim) == c.head_dim, "attention.value_length",
            "must equal key_length (K = V)");
  c.rope_dim = k.i("rope.dimension_count");
  c.q_lora_rank = k.i("attention.q_lora_rank");
  c.o_groups = k.i("attention.output_group_count");
  c.o_lora_rank = k.i("attention.output_lora_rank");
  c.window = k.i("attention.sliding_window");
  c.rms_eps = k.f("attention.layer_norm_rms_epsilon", 1e-6);
  c.rope_theta = k.f("rope.freq_base", 10000.0);
  c.compress_rope_theta = k.f("attention.compress_rope_freq_base");
  if (const GGUFValue* t = k.find("rope.scaling.type")) {
    k.require(t->type == GGUFType::STRING && (t->s == "yarn" || t->s == "none"),
              "rope.scaling.type", "must be 'yarn' or 'none'");
    if (t->s == "yarn") {
      c.yarn_factor = k.f("rope.scaling.factor");
      c.yarn_orig_ctx = k.i("rope.scaling.original_context_length");
      c.yarn_beta_fast = k.f("rope.scaling.yarn_beta_fast", 32.0);
      c.yarn_beta_slow = k.f("rope.scaling.yarn_beta_slow", 1.0);
    }
  }
  c.index_n_head = k.i("attention.indexer.head_count");
  c.index_head_dim = k.i("attention.indexer.key_length");
  c.index_topk = k.i("attention.indexer.top_k");
  c.n_expert = k.i("expert_count");
  c.n_expert_used = k.i("expert_used_count");
  c.n_ff_exp = k.i("expert_feed_forward_length");
  c.n_expert_shared = k.i("expert_shared_count", 1);
  c.routed_scale = k.f("expert_weights_scale", 1.0);
  c.norm_topk = k.i("expert_weights_norm", 1) != 0;
  k.require(k.i("expert_gating_func", 4) == 4, "expert_gating_func",
            "must be 4 (sqrtsoftplus); other gating functions are not DeepSeek-V4");
  c.n_hash_layers = k.i("hash_layer_count", 0);
  c.hc_mult = k.i("hyper_connection.count", 4);
  c.hc_sinkhorn_iters = k.i("hyper_connection.sinkhorn_iterations", 20);
  c.hc_eps = k.f("hyper_connection.epsilon", 1e-6);

  const int64_t n_all = c.n_layer + c.n_layer_mtp;
  const std::vector<double> ratios = k.per_layer("attention.compress_ratios", n_all, -1);
  for (double r : ratios) {
    // 0 = sliding only, 4 = CSA, any other block size >= 2 = HCA (128 in V4).
    k.require(r == 0 || (r >= 2 && r == static_cast<double>(static_cast<int64_t>(r))),
              "attention.compress_ratios", "entries must be 0, 4 or an HCA block size >= 2");
    c.compress_ratio.push_back(static_cast<int64_t>(r));
  }
  c.swiglu_limit = k.per_layer("swiglu_clamp_exp", n_all, 0.0);
  c.swiglu_limit_shared = k.per_layer("swiglu_clamp_shexp", n_all, 0.0);
  if (!k.find("swiglu_clamp_shexp")) c.swiglu_limit_shared = c.swiglu_limit;

  if (const GGUFValue* v = f.find("tokenizer.ggml.bos_token_id"); v && v->is_integer()) c.bos_id = v->i;
  if (const GGUFValue* v = f.find("tokenizer.ggml.eos_token_id"); v && v->is_integer()) c.eos_id = v->i;
  c.n_vocab = k.i("vocab_size", 0);  // else taken from token_embd by the weight loader

  // Shape rules the forward pass relies on.
  k.require(c.n_embd > 0 && c.n_head > 0 && c.head_dim > 0, "embedding_length", "sizes must be positive");
  k.require(c.rope_dim > 0 && c.rope_dim % 2 == 0 && c.rope_dim <= c.head_dim, "rope.dimension_count",
            "must be even and at most key_length");
  k.require(c.o_groups > 0 && c.n_head % c.o_groups == 0, "attention.output_group_count",
            "must divide the head count");
  k.require(c.window > 0, "attention.sliding_window", "must be positive");
  k.require(c.hc_mult == 4, "hyper_connection.count", "must be 4 (spec §8.2)");
  k.require(c.hc_sinkhorn_iters >= 1, "hyper_connection.sinkhorn_iterations", "must be >= 1");
  k.require(c.n_expert_used >= 1 && c.n_expert_used <= c.n_expert, "expert_used_count",
            "must be between 1 and expert_count");
  k.require(c.n_expert_shared <= 1, "expert_shared_count", "must be 0 or 1");
  k.require(c.n_hash_layers >= 0 && c.n_hash_layers <= c.n_layer, "hash_layer_count",
            "must be between 0 and the layer count");
  bool has_csa = false;
  for (int64_t r : c.compress_ratio) has_csa |= r == 4;
  if (has_csa) {
    k.require(c.index_n_head > 0 && c.index_head_dim >= c.rope_dim && c.index_topk > 0,
              "attention.indexer.head_count", "indexer sizes must be positive (key_length >= rope dims)");
  }
  return c;
}

}  // namespace pyv4
