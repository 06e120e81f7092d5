#include "model/weights.h"

#include <cinttypes>
#include <cstdio>

#include "common/error.h"
#include "gguf/gguf_file.h"
#include "quant/split_layout.h"

namespace pyv4 {

namespace {

class Binder {
 public:
  explicit Binder(const GGUFFile& f) : f_(f) {}

  const GGUFTensor& get(const std::string& name, std::vector<int64_t> shape) const {
    const GGUFTensor* t = f_.find_tensor(name);
    if (!t) throw FormatError(f_.path() + ": missing tensor '" + name + "'");
    // GGUF ne is the torch shape reversed; trailing 1-dims may be dropped by writers.
    std::vector<int64_t> want(shape.rbegin(), shape.rend());
    std::vector<int64_t> have = t->ne;
    while (have.size() > 1 && have.back() == 1 && have.size() > want.size()) have.pop_back();
    if (have != want) {
      std::string exp = "[";
      for (size_t k = 0; k < shape.size(); ++k) exp += (k ? ", " : "") + std::to_string(shape[k]);
      throw FormatError(f_.path() + ": tensor '" + name + "' has shape " + t->shape_str() +
                        ", expected " + exp + "]");
    }
    return *t;
  }

  WeightMatrix matrix(const std::string& name, int64_t rows, int64_t cols,
                      std::vector<int64_t> shape = {}) const {
    if (shape.empty()) shape = {rows, cols};
    const GGUFTensor& t = get(name, shape);
    if (!traits(t.type).is_float_weight) {
      throw FormatError(f_.path() + ": tensor '" + name + "' has type " + type_name(t.type) +
                        ", which cannot be used as a weight matrix");
    }
    WeightMatrix w;
    w.type = t.type;
    w.rows = rows;
    w.cols = cols;
    w.data = t.data;
    w.row_stride = row_bytes(t.type, cols, name);
    return w;
  }

  Vec vec(const std::string& name, std::vector<int64_t> shape) const {
    const GGUFTensor& t = get(name, shape);
    if (t.type != GGMLType::F32 && t.type != GGMLType::F16 && t.type != GGMLType::BF16) {
      throw FormatError(f_.path() + ": tensor '" + name + "' has type " + type_name(t.type) +
                        "; small tensors must be F32, F16 or BF16");
    }
    Vec out(static_cast<size_t>(t.n_elements()));
    dequantize_row(t.type, t.data, out.data(), t.n_elements());
    return out;
  }

 private:
  const GGUFFile& f_;
};

std::string blk(int64_t il, const char* name) {
  return "blk." + std::to_string(il) + "." + name;
}

HyperConnWeights hyper_conn(const Binder& b, int64_t il, const char* site, const ModelConfig& c) {
  const std::string p = std::string("hc_") + site + "_";
  HyperConnWeights w;
  w.fn = b.matrix(blk(il, (p + "fn.weight").c_str()), c.hc_mix(), c.hc_mult * c.n_embd);
  w.base = b.vec(blk(il, (p + "base.weight").c_str()), {c.hc_mix()});
  w.scale = b.vec(blk(il, (p + "scale.weight").c_str()), {3});
  return w;
}

CompressorWeights compressor(const Binder& b, int64_t il, const char* prefix, int64_t ratio,
                             int64_t width, const ModelConfig& c) {
  CompressorWeights w;
  w.ratio = ratio;
  w.width = width;
  w.overlap = ratio == 4;
  const int64_t coff = w.overlap ? 2 : 1;
  const std::string p(prefix);
  w.kv = b.matrix(blk(il, (p + "_kv.weight").c_str()), coff * width, c.n_embd);
  w.gate = b.matrix(blk(il, (p + "_gate.weight").c_str()), coff * width, c.n_embd);
  w.ape = b.vec(blk(il, (p + "_ape.weight").c_str()), {ratio, coff * width});
  w.norm = b.vec(blk(il, (p + "_norm.weight").c_str()), {width});
  return w;
}

// MemAvailable of /proc/meminfo in bytes (free memory plus reclaimable page
// cache), or 0 if it cannot be read.
uint64_t available_memory() {
  std::FILE* f = std::fopen("/proc/meminfo", "r");
  if (!f) return 0;
  char line[256];
  uint64_t kb = 0;
  while (std::fgets(line, sizeof(line), f)) {
    if (std::sscanf(line, "MemAvailable: %" SCNu64 " kB", &kb) == 1) break;
  }
  std::fclose(f);
  return kb * 1024;
}

// Every matrix the matmul kernels read (not token_embd), after binding and
// validation succeeded: a bad file fails before any copy is made.
//
// Memory policy: the copies are anonymous memory the kernel cannot page out
// and re-read, unlike the mapped file. So they are made only if they all fit
// in 90 % of MemAvailable; otherwise every matrix stays a view of the file
// (slower 4-bit decode, but a model larger than RAM still runs from the page
// cache). The file's pages under each copy are released right after it, so
// at most one matrix is held twice at a time.
void split_matrices(ModelWeights& m, ThreadPool& pool) {
  std::vector<WeightMatrix*> all = {&m.output, &m.hc_head_fn};
  for (LayerWeights& L : m.layers) {
    for (WeightMatrix* w : L.matrices()) all.push_back(w);
  }
  std::vector<WeightMatrix*> todo;
  uint64_t bytes = 0;
  for (WeightMatrix* w : all) {
    if (!w->data || !split::fits(w->type, w->cols)) continue;
    todo.push_back(w);
    bytes += split::row_stride(w->type, w->cols) * static_cast<uint64_t>(w->rows);
  }
  const uint64_t avail = available_memory();
  if (todo.empty() || (avail > 0 && bytes > avail / 10 * 9)) return;
  for (WeightMatrix* w : todo) {
    WeightMatrix s;
    // The file's pages under the tensor go: a mapped file's back to the page
    // cache (clean), a resident copy's (anonymous) back to the system.
    m.split_copies.push_back(split::split_copy(*w, &s, /*release_source=*/true, &pool));
    *w = s;
  }
}

}  // namespace

ModelWeights ModelWeights::load(const GGUFFile& f, ModelConfig& c, bool split, ThreadPool& pool) {
  Binder b(f);
  ModelWeights m;
  const GGUFTensor* emb = f.find_tensor("token_embd.weight");
  if (!emb) throw FormatError(f.path() + ": missing tensor 'token_embd.weight'");
  if (c.n_vocab == 0) c.n_vocab = emb->ne.size() == 2 ? emb->ne[1] : 0;
  const int64_t D = c.n_embd, V = c.n_vocab, hcD = c.hc_mult * c.n_embd;
  m.tok_embd = b.matrix("token_embd.weight", V, D);
  m.output = b.matrix("output.weight", V, D);
  m.output_norm = b.vec("output_norm.weight", {D});
  m.hc_head_fn = b.matrix("output_hc_fn.weight", c.hc_mult, hcD);
  m.hc_head_base = b.vec("output_hc_base.weight", {c.hc_mult});
  m.hc_head_scale = b.vec("output_hc_scale.weight", {1});

  const int64_t H = c.n_head, d = c.head_dim, E = c.n_expert, F = c.n_ff_exp;
  m.layers.resize(c.n_layer);
  for (int64_t il = 0; il < c.n_layer; ++il) {
    LayerWeights& L = m.layers[il];
    L.kind = c.kind(il);
    L.attn_norm = b.vec(blk(il, "attn_norm.weight"), {D});
    L.ffn_norm = b.vec(blk(il, "ffn_norm.weight"), {D});
    L.hc_attn = hyper_conn(b, il, "attn", c);
    L.hc_ffn = hyper_conn(b, il, "ffn", c);
    L.sinks = b.vec(blk(il, "attn_sinks.weight"), {H});
    L.wq_a = b.matrix(blk(il, "attn_q_a.weight"), c.q_lora_rank, D);
    L.q_norm = b.vec(blk(il, "attn_q_a_norm.weight"), {c.q_lora_rank});
    L.wq_b = b.matrix(blk(il, "attn_q_b.weight"), H * d, c.q_lora_rank);
    L.wkv = b.matrix(blk(il, "attn_kv.weight"), d, D);
    L.kv_norm = b.vec(blk(il, "attn_kv_a_norm.weight"), {d});
    L.wo_a = b.matrix(blk(il, "attn_output_a.weight"), c.o_groups * c.o_lora_rank,
                      H * d / c.o_groups);
    L.wo_b = b.matrix(blk(il, "attn_output_b.weight"), D, c.o_groups * c.o_lora_rank);
    if (L.kind != AttnKind::Sliding) {
      L.comp = compressor(b, il, "attn_compressor", c.compress_ratio[il], d, c);
    }
    if (L.kind == AttnKind::CSA) {
      const int64_t nih = c.index_n_head, ihd = c.index_head_dim;
      L.index_comp = compressor(b, il, "indexer_compressor", 4, ihd, c);
      L.index_q_b = b.matrix(blk(il, "indexer.attn_q_b.weight"), nih * ihd, c.q_lora_rank);
      L.index_proj = b.matrix(blk(il, "indexer.proj.weight"), nih, D);
    }
    L.router = b.matrix(blk(il, "ffn_gate_inp.weight"), E, D);
    if (il < c.n_hash_layers) {
      const GGUFTensor& t = b.get(blk(il, "ffn_gate_tid2eid.weight"), {c.n_vocab, c.n_expert_used});
      if (t.type != GGMLType::I32) {
        throw FormatError(f.path() + ": tensor '" + t.name + "' must be I32, not " + type_name(t.type));
      }
      L.tid2eid = reinterpret_cast<const int32_t*>(t.data);
      for (int64_t k = 0; k < c.n_vocab * c.n_expert_used; ++k) {
        if (L.tid2eid[k] < 0 || L.tid2eid[k] >= E) {
          throw FormatError(f.path() + ": tensor '" + t.name + "' holds expert id " +
                            std::to_string(L.tid2eid[k]) + " outside [0, " + std::to_string(E) + ")");
        }
      }
    } else {
      L.router_bias = b.vec(blk(il, "exp_probs_b.bias"), {E});
    }
    L.gate_exps = b.matrix(blk(il, "ffn_gate_exps.weight"), E * F, D, {E, F, D});
    L.up_exps = b.matrix(blk(il, "ffn_up_exps.weight"), E * F, D, {E, F, D});
    L.down_exps = b.matrix(blk(il, "ffn_down_exps.weight"), E * D, F, {E, D, F});
    L.has_shared = c.n_expert_shared > 0;
    if (L.has_shared) {
      L.gate_sh = b.matrix(blk(il, "ffn_gate_shexp.weight"), F, D);
      L.up_sh = b.matrix(blk(il, "ffn_up_shexp.weight"), F, D);
      L.down_sh = b.matrix(blk(il, "ffn_down_shexp.weight"), D, F);
    }
  }
  if (split && active_isa() == Isa::AVX512) split_matrices(m, pool);
  return m;
}

}  // namespace pyv4
