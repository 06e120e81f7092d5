// The forward pass on the GPU (contract in cuda/gpu_engine.h). Every step
// mirrors the CPU's in csrc/model/engine.cpp (eval_batch), attention.cpp
// (attention_forward) and moe.cpp (moe_forward), in the same order; the
// comments name the CPU step each block mirrors. Copies between host and
// device are plain cudaMemcpy (synchronous): correctness first, no pinned
// staging or CUDA graphs yet.
#include "cuda/gpu_engine.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"
#include "cuda/gpu_weights.h"
#include "cuda/model_ops.h"
#include "cuda/ops.h"
#include "cuda/runtime.h"
#include "model/attention.h"
#include "model/compressor.h"
#include "model/moe.h"

namespace pyv4 {
namespace cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kHc = 4;
// Chunks of at least this many tokens stream the host's active routed experts
// of a layer to the GPU and run them there (prefill), as llama.cpp moves its
// MoE op to the GPU from 32 tokens on; smaller ones (decode) run them on the
// CPU. A fixed threshold: the planner's cost model does not decide it yet.
constexpr int64_t kStreamMinTokens = 32;

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// X[t][i][d] = y[t][d] for the 4 streams (spec §3.1: every stream starts as the embedding).
__global__ void broadcast_streams_kernel(const float* y, int64_t n, int64_t D, float* X) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= n * D) return;
  const int64_t t = e / D, d = e % D;
  for (int64_t i = 0; i < kHc; ++i) X[(t * kHc + i) * D + d] = y[e];
}

// out[t][i] = Σ_k wts[t·K + k] · Y[rows[t·K + k]][i] (k in the CPU's expert
// order), then + shared[t][i] (moe_forward's sum, in its rounding order).
__global__ void combine_experts_kernel(const float* Y, const int32_t* rows, const float* wts, int64_t K,
                                       const float* shared, int64_t n, int64_t D, float* out) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= n * D) return;
  const int64_t t = e / D, i = e % D;
  float o = 0.0f;
  for (int64_t k = 0; k < K; ++k) o = __fadd_rn(o, __fmul_rn(wts[t * K + k], Y[rows[t * K + k] * D + i]));
  if (shared) o = __fadd_rn(o, shared[e]);
  out[e] = o;
}

// Device scratch that grows as needed (DeviceBuffer::reserve); each buffer is
// reserved once per use, before its pointer is taken.
float* fbuf(DeviceBuffer& b, int64_t floats) {
  b.reserve(sizeof(float) * static_cast<size_t>(std::max<int64_t>(floats, 1)));
  return b.as<float>();
}

template <class T>
T* upload_to(DeviceBuffer& b, const std::vector<T>& v) {
  b.reserve(sizeof(T) * std::max<size_t>(v.size(), 1));
  if (!v.empty()) PYV4_CUDA_CHECK(cudaMemcpy(b.data(), v.data(), sizeof(T) * v.size(), cudaMemcpyHostToDevice));
  return b.as<T>();
}

std::vector<float> download(const float* d, int64_t floats) {
  std::vector<float> h(static_cast<size_t>(floats));
  if (floats > 0) PYV4_CUDA_CHECK(cudaMemcpy(h.data(), d, sizeof(float) * h.size(), cudaMemcpyDeviceToHost));
  return h;
}

}  // namespace

struct GpuEngine::Impl {
  Engine& cpu;
  const ModelConfig& c;
  DevModel dev;
  MatmulScratch ms;
  MoeScratch moe_scratch;
  // Activations of one eval (device).
  DeviceBuffer X, y, f, post, comb, mu, pre, logits;
  // Attention.
  DeviceBuffer pos, pos_heads, qlat, q, kvr, pkv, gate, qI, wI, rows, idx, probs, o, z;
  // MoE; stream_*: the host experts streamed to the GPU for one layer of a prefill.
  DeviceBuffer router, gs, us, ys, ge, ue, yall, comb_rows, comb_wts, stream_gate, stream_up, stream_down;

  size_t stream_bytes;

  Impl(Engine& e, const ExpertRanges& experts, size_t stream)
      : cpu(e), c(e.config()), dev(upload(e, experts)), stream_bytes(stream) {}

  static DevModel upload(const Engine& e, const ExpertRanges& experts) {
    std::vector<const std::vector<float>*> rope;
    for (int64_t il = 0; il < e.config().n_layer; ++il) rope.push_back(&e.rope(il).inv_freq);
    return upload_model(e.config(), e.weights(), rope, experts);
  }

  void attention(int64_t il, const SeqSpan& sp, const float* x, float* out);
  void moe(int64_t il, const int64_t* tokens, int64_t n, const float* x, float* out);
  std::vector<float> host_experts(const LayerWeights& L, int64_t il, const std::vector<float>& x,
                                  const std::vector<int32_t>& tok, const std::vector<int32_t>& expert);
  void run_experts(const DeviceMatrix& gate, const DeviceMatrix& up, const DeviceMatrix& down, int64_t n_expert,
                   const float* x, int64_t n, const std::vector<int32_t>& tok, const std::vector<int32_t>& expert,
                   float limit, float* y);
  void stream_experts(const LayerWeights& L, const float* x, int64_t n, const std::vector<int32_t>& tok,
                      const std::vector<int32_t>& expert, float limit, float* y);
};

// attention_forward (csrc/model/attention.cpp) for one session's span; x: the
// attention inputs [n, D] on the device, out: [n, D] on the device.
void GpuEngine::Impl::attention(int64_t il, const SeqSpan& sp, const float* x, float* out) {
  const LayerWeights& L = cpu.weights().layers[il];
  const DevLayer& G = dev.layers[il];
  const RopeTable& rope = cpu.rope(il);
  KVState& kv = *sp.kv;
  const int64_t n = sp.n, pos0 = sp.pos0;
  const int64_t D = c.n_embd, H = c.n_head, d = c.head_dim, QL = c.q_lora_rank;
  const int64_t half = static_cast<int64_t>(rope.inv_freq.size());
  const float eps = static_cast<float>(c.rms_eps);
  std::vector<int64_t> pos_h(n), pos_heads_h(n * H);
  for (int64_t t = 0; t < n; ++t) {
    pos_h[t] = pos0 + t;
    for (int64_t h = 0; h < H; ++h) pos_heads_h[t * H + h] = pos0 + t;
  }
  const int64_t* pos_d = upload_to(pos, pos_h);
  const int64_t* pos_heads_d = upload_to(pos_heads, pos_heads_h);

  // Q path: q_lat = q_norm(wq_a x); q = wq_b q_lat; per-head RMS; RoPE. KV: one shared K = V head.
  float* qlat_d = fbuf(qlat, n * QL);
  float* q_d = fbuf(q, n * H * d);
  float* kvr_d = fbuf(kvr, n * d);
  matmul(G.wq_a.W, x, D, n, qlat_d, QL, ms);
  matmul(G.wkv.W, x, D, n, kvr_d, d, ms);
  rms_norm(qlat_d, G.q_norm.as<float>(), qlat_d, n, QL, eps);
  matmul(G.wq_b.W, qlat_d, QL, n, q_d, H * d, ms);
  rms_norm(q_d, nullptr, q_d, n * H, d, eps);
  cuda::rope(q_d, n * H, d, pos_heads_d, G.inv_freq.as<float>(), half, false);
  rms_norm(kvr_d, G.kv_norm.as<float>(), kvr_d, n, d, eps);
  cuda::rope(kvr_d, n, d, pos_d, G.inv_freq.as<float>(), half, false);
  // Storage rounding on the host with the session's codec (the CPU's bits),
  // also for this chunk's own attention (spec §3.4 step 3).
  std::vector<float> kvr_h = download(kvr_d, n * d);
  for (int64_t t = 0; t < n; ++t) kv.main_codec().round(&kvr_h[t * d]);
  PYV4_CUDA_CHECK(cudaMemcpy(kvr_d, kvr_h.data(), sizeof(float) * kvr_h.size(), cudaMemcpyHostToDevice));

  // Compressors before attention (a block closed by this chunk is visible to
  // it): projections on the GPU, the rolling state on the host.
  const int64_t ratio = L.kind != AttnKind::Sliding ? L.comp.ratio : 0;
  if (ratio) {
    const int64_t pw = L.comp.kv.rows;
    float* pkv_d = fbuf(pkv, n * pw);
    float* gate_d = fbuf(gate, n * pw);
    matmul(G.comp_kv.W, x, D, n, pkv_d, pw, ms);
    matmul(G.comp_gate.W, x, D, n, gate_d, pw, ms);
    const std::vector<float> pkv_h = download(pkv_d, n * pw);
    std::vector<float> gate_h = download(gate_d, n * pw);
    compressor_update(c, L.comp, rope, pkv_h.data(), gate_h.data(), n, pos0, kv, il, /*indexer=*/false);
  }
  std::vector<std::vector<int64_t>> picked;
  if (L.kind == AttnKind::CSA) {
    const int64_t pw = L.index_comp.kv.rows, nih = c.index_n_head, ihd = c.index_head_dim;
    float* pkv_d = fbuf(pkv, n * pw);
    float* gate_d = fbuf(gate, n * pw);
    matmul(G.index_comp_kv.W, x, D, n, pkv_d, pw, ms);
    matmul(G.index_comp_gate.W, x, D, n, gate_d, pw, ms);
    float* qI_d = fbuf(qI, n * nih * ihd);
    float* wI_d = fbuf(wI, n * nih);
    matmul(G.index_q_b.W, qlat_d, QL, n, qI_d, nih * ihd, ms);
    matmul(G.index_proj.W, x, D, n, wI_d, nih, ms);
    const std::vector<float> pkv_h = download(pkv_d, n * pw);
    std::vector<float> gate_h = download(gate_d, n * pw);
    std::vector<float> qI_h = download(qI_d, n * nih * ihd), wI_h = download(wI_d, n * nih);
    compressor_update(c, L.index_comp, rope, pkv_h.data(), gate_h.data(), n, pos0, kv, il, /*indexer=*/true);
    picked = indexer_select(c, L, il, rope, qI_h.data(), wI_h.data(), sp, cpu.pool());
    kv.layer(il).touch.index_keys += (pos0 + n) / ratio;
  }

  // Rows the span's queries read, decoded once into one block: the stored
  // window rows [w_first, pos0), the chunk's own rows, then the compressed
  // rows (HCA: all visible; CSA: the union of the selected ones).
  const RowCodec& mc = kv.main_codec();
  LayerState& st = kv.layer(il);
  const int64_t w_first = std::max<int64_t>(0, pos0 - c.window + 1);
  std::vector<float> rows_h, dec(d);
  auto add_row = [&](const uint8_t* rec) {
    const float* v = mc.view(rec, dec.data());
    rows_h.insert(rows_h.end(), v, v + d);
  };
  for (int64_t p = w_first; p < pos0; ++p) add_row(kv.window_rec(il, p));
  st.touch.window += pos0 - w_first;
  const int64_t own0 = pos0 - w_first;  // block row of the chunk's first token
  rows_h.insert(rows_h.end(), kvr_h.begin(), kvr_h.end());
  std::vector<int32_t> comp_row;  // compressed row b -> block row (-1: not read)
  if (ratio) {
    const int64_t nb_last = (pos0 + n) / ratio;
    comp_row.assign(nb_last, -1);
    std::vector<char> need(nb_last, L.kind == AttnKind::HCA ? 1 : 0);
    for (const auto& sel : picked)
      for (int64_t b : sel) need[b] = 1;
    int64_t used = 0;
    for (int64_t b = 0; b < nb_last; ++b) {
      if (!need[b]) continue;
      comp_row[b] = static_cast<int32_t>(rows_h.size() / d);
      add_row(kv.comp_rec(il, b));
      ++used;
    }
    st.touch.compressed += used;
  }
  // Per query its rows in the CPU's key order: window (with its own row), then compressed.
  std::vector<int32_t> idx_h;
  std::vector<int64_t> first(n + 1, 0);
  for (int64_t t = 0; t < n; ++t) {
    const int64_t P = pos0 + t;
    for (int64_t j = std::max<int64_t>(0, P - c.window + 1); j <= P; ++j)
      idx_h.push_back(static_cast<int32_t>(j >= pos0 ? own0 + (j - pos0) : j - w_first));
    if (L.kind == AttnKind::HCA) {
      for (int64_t b = 0; b < (P + 1) / ratio; ++b) idx_h.push_back(comp_row[b]);
    } else if (L.kind == AttnKind::CSA) {
      for (int64_t b : picked[t]) idx_h.push_back(comp_row[b]);
    }
    first[t + 1] = static_cast<int64_t>(idx_h.size());
  }
  int64_t max_keys = 0;
  for (int64_t t = 0; t < n; ++t) max_keys = std::max(max_keys, first[t + 1] - first[t]);
  const float* rows_d = upload_to(rows, rows_h);
  const int32_t* idx_d = upload_to(idx, idx_h);
  float* p_d = fbuf(probs, H * max_keys);
  float* o_d = fbuf(o, n * H * d);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  for (int64_t t = 0; t < n; ++t) {
    cuda::attend(q_d + t * H * d, H, d, rows_d, idx_d + first[t], first[t + 1] - first[t], G.sinks.as<float>(),
                 scale, p_d, o_d + t * H * d);
  }
  // V carried RoPE (K = V); undo it.
  cuda::rope(o_d, n * H, d, pos_heads_d, G.inv_freq.as<float>(), half, /*inverse=*/true);

  // Snapshots, then the chunk's rows into the window ring (host state).
  kv.commit_snapshots(il, pos0, n, kvr_h.data());
  for (int64_t t = std::max<int64_t>(0, n - c.window); t < n; ++t) kv.write_window(il, pos0 + t, &kvr_h[t * d]);

  // Grouped low-rank output: z_g = W_oa[g] · concat(heads of group g); out = wo_b z.
  const int64_t Gs = c.o_groups, OL = c.o_lora_rank, gw = H * d / Gs;
  float* z_d = fbuf(z, n * Gs * OL);
  for (int64_t g = 0; g < Gs; ++g)
    matmul(G.wo_a.W.row_slice(g * OL, OL), o_d + g * gw, H * d, n, z_d + g * OL, Gs * OL, ms);
  matmul(G.wo_b.W, z_d, Gs * OL, n, out, D, ms);
}

// The routed experts of the host (the pairs tok[i] x expert[i]) on the CPU pool,
// as moe_forward runs them: grouped by expert, gate and up in one
// matmul_many, SwiGLU, the downs in another. Rows of the result follow the pairs.
std::vector<float> GpuEngine::Impl::host_experts(const LayerWeights& L, int64_t il, const std::vector<float>& x,
                                                 const std::vector<int32_t>& tok, const std::vector<int32_t>& expert) {
  const int64_t D = c.n_embd, F = c.n_ff_exp, np = static_cast<int64_t>(tok.size());
  std::vector<int64_t> order(np);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return expert[a] < expert[b]; });
  std::vector<float> xe(np * D), ge(np * F), ue(np * F), ye(np * D), out(np * D);
  for (int64_t r = 0; r < np; ++r) std::copy_n(&x[tok[order[r]] * D], D, &xe[r * D]);
  std::vector<WeightMatrix> mats;
  std::vector<std::pair<int64_t, int64_t>> groups;  // (first row, rows) per expert
  for (int64_t r0 = 0; r0 < np;) {
    int64_t r1 = r0;
    while (r1 < np && expert[order[r1]] == expert[order[r0]]) ++r1;
    const int64_t e = expert[order[r0]];
    mats.push_back(L.gate_exps.row_slice(e * F, F));
    mats.push_back(L.up_exps.row_slice(e * F, F));
    mats.push_back(L.down_exps.row_slice(e * D, D));
    groups.push_back({r0, r1 - r0});
    r0 = r1;
  }
  std::vector<MatmulTask> tasks;
  for (size_t a = 0; a < groups.size(); ++a) {
    const auto [r0, ne] = groups[a];
    tasks.push_back({&mats[3 * a], &xe[r0 * D], D, ne, &ge[r0 * F], F});
    tasks.push_back({&mats[3 * a + 1], &xe[r0 * D], D, ne, &ue[r0 * F], F});
  }
  matmul_many(tasks.data(), static_cast<int64_t>(tasks.size()), cpu.pool());
  pyv4::swiglu(ge.data(), ue.data(), ge.data(), np * F, static_cast<float>(c.swiglu_limit[il]));  // the CPU op
  tasks.clear();
  for (size_t a = 0; a < groups.size(); ++a) {
    const auto [r0, ne] = groups[a];
    tasks.push_back({&mats[3 * a + 2], &ge[r0 * F], F, ne, &ye[r0 * D], D});
  }
  matmul_many(tasks.data(), static_cast<int64_t>(tasks.size()), cpu.pool());
  for (int64_t r = 0; r < np; ++r) std::copy_n(&ye[r * D], D, &out[order[r] * D]);
  return out;
}

// Routed experts on the GPU for the pairs tok[i] x expert[i] (expert: an index
// into the n_expert matrices stacked in gate / up / down): y [pairs, D].
void GpuEngine::Impl::run_experts(const DeviceMatrix& gate, const DeviceMatrix& up, const DeviceMatrix& down,
                                  int64_t n_expert, const float* x, int64_t n, const std::vector<int32_t>& tok,
                                  const std::vector<int32_t>& expert, float limit, float* y) {
  const int64_t np = static_cast<int64_t>(tok.size()), F = c.n_ff_exp;
  float* ge_d = fbuf(ge, np * F);
  float* ue_d = fbuf(ue, np * F);
  moe_matmul(gate, n_expert, x, n, tok.data(), expert.data(), np, ge_d, moe_scratch);
  moe_matmul(up, n_expert, x, n, tok.data(), expert.data(), np, ue_d, moe_scratch);
  cuda::swiglu(ge_d, ue_d, ge_d, np * F, limit);
  std::vector<int32_t> self(np);  // down: pair i reads its own hidden row i
  std::iota(self.begin(), self.end(), 0);
  moe_matmul(down, n_expert, ge_d, np, self.data(), expert.data(), np, y, moe_scratch);
}

// The host's routed experts the pairs use (expert: ids of the layer, in
// ascending order), copied to the GPU (GGML rows, stacked in id order) in
// groups of at most stream_bytes (at least one expert) and run there; y [pairs, D].
void GpuEngine::Impl::stream_experts(const LayerWeights& L, const float* x, int64_t n,
                                     const std::vector<int32_t>& tok, const std::vector<int32_t>& expert, float limit,
                                     float* y) {
  const int64_t F = c.n_ff_exp, D = c.n_embd;
  const size_t per_expert = static_cast<size_t>(F) * (row_bytes(L.gate_exps.type, L.gate_exps.cols) +
                                                       row_bytes(L.up_exps.type, L.up_exps.cols)) +
                            static_cast<size_t>(D) * row_bytes(L.down_exps.type, L.down_exps.cols);
  const size_t group = std::max<size_t>(1, stream_bytes / per_expert);  // experts per copy
  // The matrices of experts ids (in order) stacked in buf.
  auto stage = [&](const WeightMatrix& stacked, int64_t rows, const std::vector<int32_t>& ids, DeviceBuffer& buf) {
    std::vector<uint8_t> bytes;
    for (int32_t e : ids) append_ggml_rows(stacked.row_slice(e * rows, rows), bytes);
    buf.reserve(bytes.size());
    PYV4_CUDA_CHECK(cudaMemcpy(buf.data(), bytes.data(), bytes.size(), cudaMemcpyHostToDevice));
    DeviceMatrix W = stacked;
    W.rows = static_cast<int64_t>(ids.size()) * rows;
    W.data = buf.as<uint8_t>();
    W.row_stride = row_bytes(W.type, W.cols);
    W.split = false;
    return W;
  };
  const int64_t np = static_cast<int64_t>(tok.size());
  for (int64_t p0 = 0; p0 < np;) {
    // The pairs [p0, p1) of the next `group` distinct experts; each pair's
    // expert becomes its index among them.
    std::vector<int32_t> ids, local;
    int64_t p1 = p0;
    for (; p1 < np; ++p1) {
      if (p1 == p0 || expert[p1] != expert[p1 - 1]) {
        if (ids.size() == group) break;
        ids.push_back(expert[p1]);
      }
      local.push_back(static_cast<int32_t>(ids.size() - 1));
    }
    const std::vector<int32_t> t(tok.begin() + p0, tok.begin() + p1);
    const DeviceMatrix gate = stage(L.gate_exps, F, ids, stream_gate);
    const DeviceMatrix up = stage(L.up_exps, F, ids, stream_up);
    const DeviceMatrix down = stage(L.down_exps, D, ids, stream_down);
    run_experts(gate, up, down, static_cast<int64_t>(ids.size()), x, n, t, local, limit, y + p0 * D);
    p0 = p1;
  }
}

// moe_forward (csrc/model/moe.cpp): the router on the GPU, the routing on the
// host (moe_route), the shared expert and the GPU's routed experts on the
// device, the host's routed experts on the CPU pool meanwhile (or, in a large
// chunk, streamed to the GPU), the sum on the device.
void GpuEngine::Impl::moe(int64_t il, const int64_t* tokens, int64_t n, const float* x, float* out) {
  const LayerWeights& L = cpu.weights().layers[il];
  const DevLayer& G = dev.layers[il];
  const int64_t D = c.n_embd, E = c.n_expert, K = c.n_expert_used;
  float* logits_d = fbuf(router, n * E);
  matmul(G.router.W, x, D, n, logits_d, E, ms);
  std::vector<float> logits_h = download(logits_d, n * E);
  std::vector<int64_t> sel(n * K);
  std::vector<float> wt(n * K);
  moe_route(c, L, logits_h.data(), tokens, n, sel.data(), wt.data());

  // Pairs (token, expert) by where the expert lives: one segment of rows of
  // yall per GPU range, then the host's; row_of[pair] is its row.
  const size_t n_ranges = G.experts.size();
  std::vector<std::vector<int32_t>> tok(n_ranges + 1), loc(n_ranges + 1);
  std::vector<std::vector<int64_t>> pair_of(n_ranges + 1);
  for (int64_t pr = 0; pr < n * K; ++pr) {
    const int64_t e = sel[pr];
    size_t r = 0;
    while (r < n_ranges && !(G.experts[r].first <= e && e < G.experts[r].end)) ++r;
    tok[r].push_back(static_cast<int32_t>(pr / K));
    loc[r].push_back(static_cast<int32_t>(r < n_ranges ? e - G.experts[r].first : e));
    pair_of[r].push_back(pr);
  }
  {  // the host's pairs by expert (stable), so that streamed groups of experts own contiguous rows
    const size_t h = n_ranges;
    std::vector<size_t> order(tok[h].size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return loc[h][a] < loc[h][b]; });
    std::vector<int32_t> t2, l2;
    std::vector<int64_t> p2;
    for (size_t i : order) {
      t2.push_back(tok[h][i]);
      l2.push_back(loc[h][i]);
      p2.push_back(pair_of[h][i]);
    }
    tok[h].swap(t2);
    loc[h].swap(l2);
    pair_of[h].swap(p2);
  }
  std::vector<int64_t> seg0(n_ranges + 2, 0);
  for (size_t r = 0; r <= n_ranges; ++r) seg0[r + 1] = seg0[r] + static_cast<int64_t>(tok[r].size());
  std::vector<int32_t> row_of(n * K);
  for (size_t r = 0; r <= n_ranges; ++r)
    for (size_t i = 0; i < pair_of[r].size(); ++i) row_of[pair_of[r][i]] = static_cast<int32_t>(seg0[r] + i);
  float* yall_d = fbuf(yall, n * K * D);

  // The host's experts: on the CPU pool, or (a large chunk, types the GPU multiplies) streamed to the GPU.
  const bool host_work = !tok[n_ranges].empty();
  const bool stream = host_work && n >= kStreamMinTokens && multiplies(L.gate_exps.type) &&
                      multiplies(L.up_exps.type) && multiplies(L.down_exps.type);
  std::vector<float> x_h;
  if (host_work && !stream) x_h = download(x, n * D);
  // The shared expert is queued first: the GPU runs it while the host computes its experts.
  float* ys_d = nullptr;
  if (L.has_shared) {
    const int64_t Fs = L.gate_sh.rows;
    float* gs_d = fbuf(gs, n * Fs);
    float* us_d = fbuf(us, n * Fs);
    ys_d = fbuf(ys, n * D);
    matmul(G.gate_sh.W, x, D, n, gs_d, Fs, ms);
    matmul(G.up_sh.W, x, D, n, us_d, Fs, ms);
    cuda::swiglu(gs_d, us_d, gs_d, n * Fs, static_cast<float>(c.swiglu_limit_shared[il]));
    matmul(G.down_sh.W, gs_d, Fs, n, ys_d, D, ms);
  }
  std::vector<float> host_rows;
  if (host_work && !stream) host_rows = host_experts(L, il, x_h, tok[n_ranges], loc[n_ranges]);
  const float limit = static_cast<float>(c.swiglu_limit[il]);
  for (size_t r = 0; r < n_ranges; ++r) {
    if (tok[r].empty()) continue;
    const DevExperts& ex = G.experts[r];
    run_experts(ex.gate.W, ex.up.W, ex.down.W, ex.end - ex.first, x, n, tok[r], loc[r], limit, yall_d + seg0[r] * D);
  }
  if (stream) {
    stream_experts(L, x, n, tok[n_ranges], loc[n_ranges], limit, yall_d + seg0[n_ranges] * D);
  } else if (host_work) {
    PYV4_CUDA_CHECK(cudaMemcpy(yall_d + seg0[n_ranges] * D, host_rows.data(), sizeof(float) * host_rows.size(),
                               cudaMemcpyHostToDevice));
  }
  // Per token its K rows and weights in ascending expert order (moe_forward sums by expert).
  std::vector<int32_t> rows_h(n * K);
  std::vector<float> wts_h(n * K);
  for (int64_t t = 0; t < n; ++t) {
    std::vector<int64_t> ks(K);
    std::iota(ks.begin(), ks.end(), 0);
    std::sort(ks.begin(), ks.end(), [&](int64_t a, int64_t b) { return sel[t * K + a] < sel[t * K + b]; });
    for (int64_t k = 0; k < K; ++k) {
      rows_h[t * K + k] = row_of[t * K + ks[k]];
      wts_h[t * K + k] = wt[t * K + ks[k]];
    }
  }
  const int32_t* rows_d = upload_to(comb_rows, rows_h);
  const float* wts_d = upload_to(comb_wts, wts_h);
  combine_experts_kernel<<<blocks_for(n * D), kThreads>>>(yall_d, rows_d, wts_d, K, ys_d, n, D, out);
  PYV4_CUDA_LAUNCHED(combine_experts_kernel);
}

GpuEngine::GpuEngine(Engine& cpu, const std::vector<ExpertRange>& experts_on_gpu, size_t stream_bytes) {
  require_device();
  ExpertRanges ranges(cpu.config().n_layer);
  for (const ExpertRange& r : experts_on_gpu) {
    if (r.layer < 0 || r.layer >= cpu.config().n_layer)
      throw InputError("GPU path: expert range for layer " + std::to_string(r.layer) + " of a model with " +
                       std::to_string(cpu.config().n_layer) + " layers");
    ranges[r.layer].push_back({r.first, r.end});
  }
  impl_ = std::make_unique<Impl>(cpu, ranges, stream_bytes);
}

GpuEngine::~GpuEngine() = default;

size_t GpuEngine::weight_bytes() const { return impl_->dev.bytes; }

int64_t GpuEngine::experts_on_gpu(int64_t il) const {
  if (il < 0 || il >= impl_->c.n_layer) throw InputError("experts_on_gpu: no layer " + std::to_string(il));
  int64_t k = 0;
  for (const DevExperts& e : impl_->dev.layers[il].experts) k += e.end - e.first;
  return k;
}

std::vector<float> GpuEngine::eval(KVState& state, const int64_t* tokens, int64_t n, bool all_logits) {
  Impl& m = *impl_;
  const ModelConfig& c = m.c;
  const ModelWeights& w = m.cpu.weights();
  const Engine::BatchItem item{&state, tokens, n, all_logits};
  const SeqSpan sp = m.cpu.check_batch(&item, 1)[0];  // nothing changes before this passes
  state.begin_eval();
  const int64_t D = c.n_embd, W = kHc * D, M = c.hc_mix();
  const float eps = static_cast<float>(c.rms_eps), hc_eps = static_cast<float>(c.hc_eps);
  // Residual streams: every stream starts as the token's embedding (spec §3.1);
  // the table stays on the host, its rows are decoded there.
  std::vector<float> emb(n * D);
  for (int64_t t = 0; t < n; ++t) dequantize_row(w.tok_embd.type, w.tok_embd.row(tokens[t]), &emb[t * D], D);
  float* X = fbuf(m.X, n * W);
  float* y = fbuf(m.y, n * D);
  float* f = fbuf(m.f, n * D);
  float* post = fbuf(m.post, n * kHc);
  float* comb = fbuf(m.comb, n * kHc * kHc);
  float* mu = fbuf(m.mu, n * M);
  float* pre = fbuf(m.pre, n * kHc);
  PYV4_CUDA_CHECK(cudaMemcpy(y, emb.data(), sizeof(float) * emb.size(), cudaMemcpyHostToDevice));
  broadcast_streams_kernel<<<blocks_for(n * D), kThreads>>>(y, n, D, X);
  PYV4_CUDA_LAUNCHED(broadcast_streams_kernel);

  for (int64_t il = 0; il < c.n_layer; ++il) {
    const DevLayer& G = m.dev.layers[il];
    hc_pre(G.hc_attn.fn.W, G.hc_attn.base.as<float>(), G.hc_attn.scale.as<float>(), X, n, D, c.hc_sinkhorn_iters,
           hc_eps, eps, y, post, comb, mu, pre, m.ms);
    rms_norm(y, G.attn_norm.as<float>(), y, n, D, eps);
    m.attention(il, sp, y, f);
    hc_post(post, comb, f, X, n, D);
    hc_pre(G.hc_ffn.fn.W, G.hc_ffn.base.as<float>(), G.hc_ffn.scale.as<float>(), X, n, D, c.hc_sinkhorn_iters,
           hc_eps, eps, y, post, comb, mu, pre, m.ms);
    rms_norm(y, G.ffn_norm.as<float>(), y, n, D, eps);
    m.moe(il, tokens, n, y, f);
    hc_post(post, comb, f, X, n, D);
  }
  state.end_eval(tokens, n);

  // Head: the rows asked for (all, or the last one) are contiguous in X.
  const int64_t n_out = all_logits ? n : 1;
  const float* Xo = X + (n - n_out) * W;
  hc_head(m.dev.hc_head_fn.W, m.dev.hc_head_base.as<float>(), w.hc_head_scale[0], Xo, n_out, D, hc_eps, eps, y, mu,
          pre, m.ms);
  rms_norm(y, m.dev.output_norm.as<float>(), y, n_out, D, eps);
  float* logits = fbuf(m.logits, n_out * c.n_vocab);
  matmul(m.dev.output.W, y, D, n_out, logits, c.n_vocab, m.ms);
  return download(logits, n_out * c.n_vocab);  // synchronizes: reports any fault of the step
}

void GpuEngine::truncate(KVState& state, int64_t n) {
  impl_->cpu.truncate(state, n, [this](KVState& s, const int64_t* ids, int64_t k) { eval(s, ids, k, false); });
}

}  // namespace cuda
}  // namespace pyv4
