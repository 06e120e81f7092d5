#include "model/compressor.h"

#include <cmath>
#include <vector>

#include "common/profiler.h"
#include "model/compressor_math.h"

namespace pyv4 {

namespace {

// Emits block b from the raw token projections held in st's tail (the pooling
// per channel: compressor_math.h).
// The row goes through the KV type's rounding (spec §3.5 QAT: act_quant of the
// nope dims; §3.6: Hadamard + FP4 for indexer keys) before it is stored.
void emit_block(const ModelConfig& c, const CompressorWeights& w, const RopeTable& rope,
                int64_t b, CompressorState& st, KVState& kv, int64_t il, bool indexer) {
  const int64_t m = w.ratio, width = w.width;
  std::vector<float> row(width);
  for (int64_t ch = 0; ch < width; ++ch) {
    row[ch] = compressor_math::pool_channel(st.tail_kv.data(), st.tail_gate.data(), st.tail_start, st.proj_width,
                                            b, m, width, w.overlap, ch);
  }
  rms_norm(row.data(), w.norm.data(), row.data(), width, static_cast<float>(c.rms_eps));
  rope.apply(row.data(), width, b * m);  // at the block's first token
  if (indexer) {
    kv.index_codec().round(row.data());
    kv.append_index(il, row.data());
  } else {
    kv.main_codec().round(row.data());
    kv.append_comp(il, row.data());
  }
}

}  // namespace

void compressor_project(const ModelConfig& c, const CompressorWeights& w, const float* x, int64_t n,
                        float* pkv, float* gate, bool indexer, ThreadPool& pool) {
  PROF_SCOPE(indexer ? "matmul.indexer_comp" : "matmul.compressor");
  const int64_t pw = w.kv.rows;
  const MatmulTask t[2] = {{&w.kv, x, c.n_embd, n, pkv, pw}, {&w.gate, x, c.n_embd, n, gate, pw}};
  matmul_many(t, 2, pool);
}

void compressor_update(const ModelConfig& c, const CompressorWeights& w, const RopeTable& rope,
                       const float* pkv, float* gate, int64_t n, int64_t pos0, KVState& kv,
                       int64_t il, bool indexer) {
  CompressorState& st = indexer ? kv.layer(il).index_tail : kv.layer(il).comp_tail;
  const int64_t every = kv.snap_every();
  const int64_t pw = st.proj_width, m = w.ratio;
  PROF_SCOPE(indexer ? "indexer_comp" : "compressor");
  for (int64_t t = 0; t < n; ++t) {
    const int64_t p = pos0 + t;
    float* g = gate + t * pw;
    const float* ape = w.ape.data() + (p % m) * pw;  // learned bias per slot in the block
    for (int64_t k = 0; k < pw; ++k) g[k] += ape[k];
    st.push_token(pkv + t * pw, g);
    if ((p + 1) % m == 0) {
      const int64_t b = p / m;
      emit_block(c, w, rope, b, st, kv, il, indexer);
      // CSA keeps block b's series A for block b+1; HCA needs nothing.
      st.drop_tail_before(w.overlap ? b * m : (b + 1) * m);
    }
    if ((p + 1) % every == 0) st.pending.push_back({p + 1, st.tail_start, st.tail_kv, st.tail_gate});
  }
}

}  // namespace pyv4
