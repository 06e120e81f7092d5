// The forward pass on the GPU (contract in cuda/gpu_engine.h). Every step
// mirrors the CPU's in csrc/model/engine.cpp (eval_batch), attention.cpp
// (attention_forward) and moe.cpp (moe_forward), in the same order; the
// comments name the CPU step each block mirrors. Kernels and copies run in
// the order of the default stream; activations cross PCIe through pinned
// staging areas (cuda::Staging), asynchronously where the host does not wait
// for them; streamed experts are copied on a second stream (double-buffered).
// No CUDA graphs yet.
#include "cuda/gpu_engine.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <cmath>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"
#include "cuda/buffer.h"
#include "cuda/gpu_kv.h"
#include "cuda/gpu_weights.h"
#include "cuda/kv_rows.h"
#include "cuda/model_ops.h"
#include "cuda/ops.h"
#include "cuda/runtime.h"
#include "cuda/stream_plan.h"
#include "model/attention.h"
#include "model/compressor.h"
#include "model/moe.h"

namespace pyv4 {
namespace cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kHc = 4;
unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// Bytes of one routed expert of a layer (its gate, up and down rows, GGML).
size_t expert_bytes(const LayerWeights& L, int64_t n_expert) {
  size_t b = 0;
  for (const WeightMatrix* m : {&L.gate_exps, &L.up_exps, &L.down_exps})
    b += static_cast<size_t>(m->rows / n_expert) * row_bytes(m->type, m->cols);
  return b;
}

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

// pos[i] = pos0 + i / per (per query, or per head of each query).
__global__ void positions_kernel(int64_t* pos, int64_t count, int64_t pos0, int64_t per) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) pos[i] = pos0 + i / per;
}

// x[i] *= s (indexer_select's head-weight scales, the product taken on the host as there).
__global__ void scale_kernel(float* x, int64_t n, float s) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) x[i] *= s;
}

// Device scratch that grows as needed (DeviceBuffer::reserve); each buffer is
// reserved once per use, before its pointer is taken.
float* fbuf(DeviceBuffer& b, int64_t floats) {
  b.reserve(sizeof(float) * static_cast<size_t>(std::max<int64_t>(floats, 1)));
  return b.as<float>();
}

const int64_t* positions(DeviceBuffer& b, int64_t pos0, int64_t n, int64_t per) {
  b.reserve(sizeof(int64_t) * static_cast<size_t>(std::max<int64_t>(n * per, 1)));
  positions_kernel<<<blocks_for(n * per), kThreads>>>(b.as<int64_t>(), n * per, pos0, per);
  PYV4_CUDA_LAUNCHED(positions_kernel);
  return b.as<int64_t>();
}

// The device arrays (pointer, floats) copied one after the other into the
// pinned area s; waits for them. Their host copies lie at the result
// (valid until s is taken again).
float* fetch(Staging& s, std::initializer_list<std::pair<const float*, int64_t>> parts) {
  size_t total = 0;
  for (const auto& p : parts) total += sizeof(float) * static_cast<size_t>(p.second);
  s.take(total);
  size_t off = 0;
  for (const auto& [ptr, floats] : parts) {
    s.from_device(off, ptr, sizeof(float) * static_cast<size_t>(floats));
    off += sizeof(float) * static_cast<size_t>(floats);
  }
  s.wait();
  return s.as<float>();
}

// The second stream of a streamed prefill (copies of experts) and the events
// that order it with the default stream's work: per buffer slot, copied
// (copy done) and used (its group's experts done).
struct CopyStream {
  cudaStream_t stream = nullptr;
  cudaEvent_t copied[2] = {}, used[2] = {};
  CopyStream() {
    PYV4_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    for (int i = 0; i < 2; ++i) {
      PYV4_CUDA_CHECK(cudaEventCreateWithFlags(&copied[i], cudaEventDisableTiming));
      PYV4_CUDA_CHECK(cudaEventCreateWithFlags(&used[i], cudaEventDisableTiming));
    }
  }
  ~CopyStream() {
    cudaStreamSynchronize(stream);
    for (int i = 0; i < 2; ++i) {
      cudaEventDestroy(copied[i]);
      cudaEventDestroy(used[i]);
    }
    cudaStreamDestroy(stream);
  }
  CopyStream(const CopyStream&) = delete;
  CopyStream& operator=(const CopyStream&) = delete;
};

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
  DeviceBuffer pos, pos_heads, qlat, q, kvr, pkv, gate, qI, wI, probs, o, z;
  DeviceBuffer pos_index, idx_scratch, scores, sel;
  // MoE.
  DeviceBuffer router, gs, us, ys, ge, ue, yall, comb_rows, comb_wts;
  // The host experts streamed to the GPU for one layer of a prefill: two
  // slots (one copied while the other computes), each gate, up, down.
  DeviceBuffer stream_w[2][3];
  Staging stream_stage[2];
  std::unique_ptr<CopyStream> copier;
  size_t stream_bytes;
  StreamCosts costs;
  // Pinned staging: activations down / up, the experts' combination up.
  Staging act_down, act_up, comb_up;
  // The device copy of the session's rows.
  GpuKV kv_dev;

  Impl(Engine& e, const ExpertRanges& experts, size_t stream, const StreamCosts& sc, int64_t csa_rows_gpu)
      : cpu(e),
        c(e.config()),
        dev(upload(e, experts)),
        stream_bytes(stream),
        costs(sc),
        kv_dev(e.config(), csa_rows_gpu) {}

  static DevModel upload(const Engine& e, const ExpertRanges& experts) {
    std::vector<const std::vector<float>*> rope;
    for (int64_t il = 0; il < e.config().n_layer; ++il) rope.push_back(&e.rope(il).inv_freq);
    return upload_model(e.config(), e.weights(), rope, experts);
  }

  std::vector<float> eval(KVState& state, const SeqSpan& sp, const int64_t* tokens, bool all_logits);
  void attention(int64_t il, const SeqSpan& sp, const float* x, float* out);
  std::vector<std::vector<int64_t>> select_on_gpu(int64_t il, const SeqSpan& sp, float* qI_d, float* wI_d);
  void moe(int64_t il, const int64_t* tokens, int64_t n, const float* x, float* out);
  void host_experts(const LayerWeights& L, int64_t il, const float* x, const std::vector<int32_t>& tok,
                    const std::vector<int32_t>& expert, float* out);
  void run_experts(const DeviceMatrix& gate, const DeviceMatrix& up, const DeviceMatrix& down, int64_t n_expert,
                   const float* x, int64_t n, const std::vector<int32_t>& tok, const std::vector<int32_t>& expert,
                   float limit, float* y);
  void stream_experts(const LayerWeights& L, const float* x, int64_t n, const std::vector<int32_t>& tok,
                      const std::vector<int32_t>& expert, float limit, float* y);

  // Whether the device has room for the streaming slots of `bytes` of host
  // experts (two groups of at most stream_bytes / 2; grown on first use). The
  // plan's margin counts one pass's activations, not these: on a card the
  // plan filled, the CPU computes the host's experts instead.
  bool stream_room(size_t bytes) const {
    const size_t want = 2 * std::min(bytes, stream_bytes / 2);
    size_t have = 0;
    for (const auto& slot : stream_w)
      for (const DeviceBuffer& b : slot) have += b.size();
    if (want <= have) return true;
    size_t free = 0, total = 0;
    PYV4_CUDA_CHECK(cudaMemGetInfo(&free, &total));  // of the current device (DeviceScope)
    constexpr size_t kHeadroom = size_t(256) << 20;  // the other buffers may still grow
    return free >= want - have + kHeadroom;
  }
};

// attention_forward (csrc/model/attention.cpp) for one session's span; x: the
// attention inputs [n, D] on the device, out: [n, D] on the device. The
// session's rows are read from the device copy (kv_dev, cuda/gpu_kv.h).
void GpuEngine::Impl::attention(int64_t il, const SeqSpan& sp, const float* x, float* out) {
  const LayerWeights& L = cpu.weights().layers[il];
  const DevLayer& G = dev.layers[il];
  const RopeTable& rope = cpu.rope(il);
  KVState& kv = *sp.kv;
  const int64_t n = sp.n, pos0 = sp.pos0;
  const int64_t D = c.n_embd, H = c.n_head, d = c.head_dim, QL = c.q_lora_rank;
  const int64_t half = static_cast<int64_t>(rope.inv_freq.size());
  const float eps = static_cast<float>(c.rms_eps);
  const int64_t* pos_d = positions(pos, pos0, n, 1);
  const int64_t* pos_heads_d = positions(pos_heads, pos0, n, H);

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
  // Storage rounding on the device with the session's codec (the CPU's bits),
  // also for this chunk's own attention (spec §3.4 step 3); the records too.
  kv_dev.encode_chunk(il, kvr_d);

  // Compressors before attention (a block closed by this chunk is visible to
  // it): projections on the GPU, the rolling state on the host (the policy:
  // gpu_engine.h); the rows they emit are copied to the device.
  const int64_t ratio = L.kind != AttnKind::Sliding ? L.comp.ratio : 0;
  if (ratio) {
    const int64_t pw = L.comp.kv.rows;
    float* pkv_d = fbuf(pkv, n * pw);
    float* gate_d = fbuf(gate, n * pw);
    matmul(G.comp_kv.W, x, D, n, pkv_d, pw, ms);
    matmul(G.comp_gate.W, x, D, n, gate_d, pw, ms);
    float* h = fetch(act_down, {{pkv_d, n * pw}, {gate_d, n * pw}});
    compressor_update(c, L.comp, rope, h, h + n * pw, n, pos0, kv, il, /*indexer=*/false);
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
    float* h = fetch(act_down, {{pkv_d, n * pw}, {gate_d, n * pw}});
    compressor_update(c, L.index_comp, rope, h, h + n * pw, n, pos0, kv, il, /*indexer=*/true);
    kv_dev.copy_appended(il, kv);
    if (kv.index_codec().type == KVType::FP8 && kv_dev.index_on_device(il) == kv.n_index(il)) {
      picked = select_on_gpu(il, sp, qI_d, wI_d);
    } else {
      float* hq = fetch(act_down, {{qI_d, n * nih * ihd}, {wI_d, n * nih}});
      picked = indexer_select(c, L, il, rope, hq, hq + n * nih * ihd, sp, cpu.pool());
    }
    kv.layer(il).touch.index_keys += (pos0 + n) / ratio;
  } else if (ratio) {
    kv_dev.copy_appended(il, kv);
  }

  // The rows the span's queries read, where they lie (cuda/kv_rows.h).
  const AttnRows a = plan_attn_rows(pos0, n, c.window, L.kind, ratio, picked, kv_dev.comp_on_device(il));
  LayerState& st = kv.layer(il);
  st.touch.window += a.window_read;
  st.touch.compressed += a.comp_read;
  const GpuKV::Table tab = kv_dev.row_table(il, a, kv);
  int64_t max_keys = 0;
  for (int64_t t = 0; t < n; ++t) max_keys = std::max(max_keys, a.first[t + 1] - a.first[t]);
  float* p_d = fbuf(probs, H * max_keys);
  float* o_d = fbuf(o, n * H * d);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const int64_t nope = kv.main_codec().nope;
  for (int64_t t = 0; t < n; ++t) {
    cuda::attend_records(q_d + t * H * d, H, d, kv.type(), nope, tab.rows, tab.idx + a.first[t],
                         a.first[t + 1] - a.first[t], G.sinks.as<float>(), scale, p_d, o_d + t * H * d);
  }
  // V carried RoPE (K = V); undo it.
  cuda::rope(o_d, n * H, d, pos_heads_d, G.inv_freq.as<float>(), half, /*inverse=*/true);
  // The chunk's rows into the device's window ring (the host's: GpuKV::write_back).
  kv_dev.store_ring(il);

  // Grouped low-rank output: z_g = W_oa[g] · concat(heads of group g); out = wo_b z.
  const int64_t Gs = c.o_groups, OL = c.o_lora_rank, gw = H * d / Gs;
  float* z_d = fbuf(z, n * Gs * OL);
  for (int64_t g = 0; g < Gs; ++g)
    matmul(G.wo_a.W.row_slice(g * OL, OL), o_d + g * gw, H * d, n, z_d + g * OL, Gs * OL, ms);
  matmul(G.wo_b.W, z_d, Gs * OL, n, out, D, ms);
}

// indexer_select on the GPU for kv="fp8" (the keys the device holds, FP4
// records): the query's RoPE, Hadamard and FP4 rounding (index_round_fp4:
// kv_encode's index path, the records discarded), the head weights' scales,
// then per query the scores of its visible keys and their top-k (spec §3.6).
std::vector<std::vector<int64_t>> GpuEngine::Impl::select_on_gpu(int64_t il, const SeqSpan& sp, float* qI_d,
                                                                float* wI_d) {
  const LayerWeights& L = cpu.weights().layers[il];
  const DevLayer& G = dev.layers[il];
  const KVState& kv = *sp.kv;
  const int64_t n = sp.n, pos0 = sp.pos0, nih = c.index_n_head, ihd = c.index_head_dim;
  const int64_t ratio = L.comp.ratio, k = c.index_topk;
  const int64_t half = static_cast<int64_t>(cpu.rope(il).inv_freq.size());
  const size_t qrec = kv.index_codec().bytes;
  cuda::rope(qI_d, n * nih, ihd, positions(pos_index, pos0, n, nih), G.inv_freq.as<float>(), half, false);
  idx_scratch.reserve(static_cast<size_t>(n * nih) * qrec);
  kv_encode(KVType::FP8, qI_d, n * nih, ihd, 0, /*index=*/true, idx_scratch.as<uint8_t>(), qrec);
  const float wscale = 1.0f / std::sqrt(static_cast<float>(nih)), qscale = 1.0f / std::sqrt(static_cast<float>(ihd));
  scale_kernel<<<blocks_for(n * nih), kThreads>>>(wI_d, n * nih, wscale * qscale);
  PYV4_CUDA_LAUNCHED(scale_kernel);
  // Query t sees the blocks [0, (pos0 + t + 1) / ratio); its scores at off[t].
  std::vector<int64_t> off(n + 1, 0);
  for (int64_t t = 0; t < n; ++t) off[t + 1] = off[t] + (pos0 + t + 1) / ratio;
  float* sc_d = fbuf(scores, off[n]);
  sel.reserve(sizeof(int64_t) * static_cast<size_t>(std::max<int64_t>(n * k, 1)));
  int64_t* sel_d = sel.as<int64_t>();  // query t's min(k, its blocks) picks at t·k
  for (int64_t t = 0; t < n; ++t) {
    const int64_t nb = off[t + 1] - off[t];
    if (nb == 0) continue;
    index_scores_fp4(qI_d + t * nih * ihd, wI_d + t * nih, nih, ihd, kv_dev.index_keys(il), kv.index_codec().bytes,
                     nb, sc_d + off[t]);
    topk(sc_d + off[t], 1, nb, k, sel_d + t * k);
  }
  act_down.take(sizeof(int64_t) * n * k);
  act_down.from_device(0, sel_d, sizeof(int64_t) * n * k);
  act_down.wait();
  const int64_t* h = act_down.as<int64_t>();
  std::vector<std::vector<int64_t>> picked(n);
  for (int64_t t = 0; t < n; ++t)
    picked[t].assign(h + t * k, h + t * k + std::min(k, off[t + 1] - off[t]));
  return picked;
}

// The routed experts of the host (the pairs tok[i] x expert[i]) on the CPU pool,
// as moe_forward runs them: grouped by expert, gate and up in one
// matmul_many, SwiGLU, the downs in another. Rows of out [pairs, D] follow the pairs.
void GpuEngine::Impl::host_experts(const LayerWeights& L, int64_t il, const float* x, const std::vector<int32_t>& tok,
                                   const std::vector<int32_t>& expert, float* out) {
  const int64_t D = c.n_embd, F = c.n_ff_exp, np = static_cast<int64_t>(tok.size());
  std::vector<int64_t> order(np);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return expert[a] < expert[b]; });
  std::vector<float> xe(np * D), ge(np * F), ue(np * F), ye(np * D);
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
// groups (cuda/stream_plan.h) and run there; y [pairs, D]. Double-buffered:
// while the default stream computes group g from slot g % 2, the copy stream
// fills the other slot with group g + 1 (the host packs it meanwhile), so the
// two slots together stay within stream_bytes.
void GpuEngine::Impl::stream_experts(const LayerWeights& L, const float* x, int64_t n,
                                     const std::vector<int32_t>& tok, const std::vector<int32_t>& expert, float limit,
                                     float* y) {
  const int64_t F = c.n_ff_exp, D = c.n_embd;
  const WeightMatrix* mats[3] = {&L.gate_exps, &L.up_exps, &L.down_exps};
  const int64_t rows[3] = {F, F, D};
  const size_t per_expert = expert_bytes(L, c.n_expert);
  if (!copier) copier = std::make_unique<CopyStream>();
  CopyStream& cs = *copier;
  std::vector<uint8_t> bytes[3];
  const std::vector<StreamGroup> groups = plan_stream_groups(expert, per_expert, stream_bytes / 2);
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    const StreamGroup& g = groups[gi];
    const int slot = static_cast<int>(gi % 2);
    size_t total = 0;
    for (int w = 0; w < 3; ++w) {
      bytes[w].clear();
      for (int32_t e : g.ids) append_ggml_rows(mats[w]->row_slice(e * rows[w], rows[w]), bytes[w]);
      total += bytes[w].size();
    }
    // The slot's pinned area is free once its last copy is done (take waits),
    // its device buffers once the group computed from them is (used[slot]).
    uint8_t* h = stream_stage[slot].take(total);
    PYV4_CUDA_CHECK(cudaStreamWaitEvent(cs.stream, cs.used[slot], 0));
    DeviceMatrix W[3];
    size_t off = 0;
    for (int w = 0; w < 3; ++w) {
      std::memcpy(h + off, bytes[w].data(), bytes[w].size());
      stream_w[slot][w].reserve(bytes[w].size());
      stream_stage[slot].to_device(stream_w[slot][w].data(), off, bytes[w].size(), cs.stream);
      off += bytes[w].size();
      W[w] = *mats[w];
      W[w].rows = static_cast<int64_t>(g.ids.size()) * rows[w];
      W[w].data = stream_w[slot][w].as<uint8_t>();
      W[w].row_stride = row_bytes(W[w].type, W[w].cols);
      W[w].split = false;
    }
    PYV4_CUDA_CHECK(cudaEventRecord(cs.copied[slot], cs.stream));
    PYV4_CUDA_CHECK(cudaStreamWaitEvent(nullptr, cs.copied[slot], 0));
    const std::vector<int32_t> t(tok.begin() + g.p0, tok.begin() + g.p1);
    run_experts(W[0], W[1], W[2], static_cast<int64_t>(g.ids.size()), x, n, t, g.local, limit, y + g.p0 * D);
    PYV4_CUDA_CHECK(cudaEventRecord(cs.used[slot], nullptr));
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
  std::vector<int64_t> sel(n * K);
  std::vector<float> wt(n * K);
  moe_route(c, L, fetch(act_down, {{logits_d, n * E}}), tokens, n, sel.data(), wt.data());

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

  // The host's experts: on the CPU pool, or (a large chunk) streamed to the GPU.
  const bool host_work = !tok[n_ranges].empty();
  bool stream = host_work;
  if (stream) {  // the cost model (cuda/stream_plan.h) on the experts this chunk uses
    const std::vector<int32_t>& ex = loc[n_ranges];  // sorted by expert above
    size_t used = 0;
    for (size_t i = 0; i < ex.size(); ++i) used += i == 0 || ex[i] != ex[i - 1];
    const size_t bytes = used * expert_bytes(L, c.n_expert);
    stream = stream_pays(bytes, static_cast<int64_t>(ex.size()),
                         3.0 * static_cast<double>(c.n_ff_exp) * static_cast<double>(c.n_embd), costs) &&
             stream_room(bytes);
  }
  const float* x_h = host_work && !stream ? fetch(act_down, {{x, n * D}}) : nullptr;
  // The shared expert and the GPU's routed experts are queued first: the GPU
  // runs them while the host computes its experts.
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
  const float limit = static_cast<float>(c.swiglu_limit[il]);
  for (size_t r = 0; r < n_ranges; ++r) {
    if (tok[r].empty()) continue;
    const DevExperts& ex = G.experts[r];
    run_experts(ex.gate.W, ex.up.W, ex.down.W, ex.end - ex.first, x, n, tok[r], loc[r], limit, yall_d + seg0[r] * D);
  }
  // The host's results go straight into the pinned area they are sent from.
  const size_t host_bytes = sizeof(float) * tok[n_ranges].size() * D;
  if (host_work && !stream)
    host_experts(L, il, x_h, tok[n_ranges], loc[n_ranges], reinterpret_cast<float*>(act_up.take(host_bytes)));
  if (stream) {
    stream_experts(L, x, n, tok[n_ranges], loc[n_ranges], limit, yall_d + seg0[n_ranges] * D);
  } else if (host_work) {
    act_up.to_device(yall_d + seg0[n_ranges] * D, 0, host_bytes);
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
  // Both arrays through one area of their own: no wait for the copies queued before.
  comb_rows.reserve(sizeof(int32_t) * n * K);
  comb_wts.reserve(sizeof(float) * n * K);
  uint8_t* hc = comb_up.take((sizeof(int32_t) + sizeof(float)) * n * K);
  std::memcpy(hc, rows_h.data(), sizeof(int32_t) * n * K);
  std::memcpy(hc + sizeof(int32_t) * n * K, wts_h.data(), sizeof(float) * n * K);
  comb_up.to_device(comb_rows.data(), 0, sizeof(int32_t) * n * K);
  comb_up.to_device(comb_wts.data(), sizeof(int32_t) * n * K, sizeof(float) * n * K);
  const int32_t* rows_d = comb_rows.as<int32_t>();
  const float* wts_d = comb_wts.as<float>();
  combine_experts_kernel<<<blocks_for(n * D), kThreads>>>(yall_d, rows_d, wts_d, K, ys_d, n, D, out);
  PYV4_CUDA_LAUNCHED(combine_experts_kernel);
}

GpuEngine::GpuEngine(Engine& cpu, const std::vector<ExpertRange>& experts_on_gpu, const StreamCosts& costs,
                     size_t stream_bytes, int64_t csa_rows_gpu, int device)
    : device_(device) {
  const DeviceScope on(device);  // the weights, buffers, streams and events are this device's
  ExpertRanges ranges(cpu.config().n_layer);
  for (const ExpertRange& r : experts_on_gpu) {
    if (r.layer < 0 || r.layer >= cpu.config().n_layer)
      throw InputError("GPU path: expert range for layer " + std::to_string(r.layer) + " of a model with " +
                       std::to_string(cpu.config().n_layer) + " layers");
    ranges[r.layer].push_back({r.first, r.end});
  }
  impl_ = std::make_unique<Impl>(cpu, ranges, stream_bytes, costs, csa_rows_gpu);
}

GpuEngine::~GpuEngine() {
  if (!impl_) return;
  try {
    const DeviceScope on(device_);  // device memory is freed on its own device
    impl_.reset();
  } catch (...) {  // the device is gone: nothing left to free
  }
}

size_t GpuEngine::weight_bytes() const { return impl_->dev.bytes; }

size_t GpuEngine::kv_bytes() const { return impl_->kv_dev.bytes(); }

int64_t GpuEngine::experts_on_gpu(int64_t il) const {
  if (il < 0 || il >= impl_->c.n_layer) throw InputError("experts_on_gpu: no layer " + std::to_string(il));
  int64_t k = 0;
  for (const DevExperts& e : impl_->dev.layers[il].experts) k += e.end - e.first;
  return k;
}

std::vector<float> GpuEngine::eval(KVState& state, const int64_t* tokens, int64_t n, bool all_logits) {
  const DeviceScope on(device_);
  Impl& m = *impl_;
  try {
    return m.cpu.eval_in_passes(state, tokens, n, all_logits, [&](const int64_t* t, int64_t k) {
      const Engine::BatchItem item{&state, t, k, all_logits};
      const SeqSpan sp = m.cpu.check_batch(&item, 1)[0];
      try {
        return m.eval(state, sp, t, all_logits);
      } catch (...) {
        // The host state may be half-updated (compressor rows appended,
        // snapshots written): put it back on the CPU (the device may be what
        // failed); eval_in_passes undoes the passes before.
        try {
          m.cpu.recover(state);
        } catch (...) {  // the first error is the one reported
        }
        throw;
      }
    });
  } catch (...) {
    m.kv_dev.invalidate();  // copy the session to the device anew next time
    throw;
  }
}

std::vector<float> GpuEngine::Impl::eval(KVState& state, const SeqSpan& sp, const int64_t* tokens, bool all_logits) {
  Impl& m = *this;
  const int64_t n = sp.n;
  const ModelWeights& w = m.cpu.weights();
  m.kv_dev.begin(state, n);
  state.begin_eval();
  const int64_t D = c.n_embd, W = kHc * D, M = c.hc_mix();
  const float eps = static_cast<float>(c.rms_eps), hc_eps = static_cast<float>(c.hc_eps);
  // Residual streams: every stream starts as the token's embedding (spec §3.1);
  // the table stays on the host, its rows are decoded there.
  float* emb = reinterpret_cast<float*>(m.act_up.take(sizeof(float) * n * D));
  for (int64_t t = 0; t < n; ++t) dequantize_row(w.tok_embd.type, w.tok_embd.row(tokens[t]), &emb[t * D], D);
  float* X = fbuf(m.X, n * W);
  float* y = fbuf(m.y, n * D);
  float* f = fbuf(m.f, n * D);
  float* post = fbuf(m.post, n * kHc);
  float* comb = fbuf(m.comb, n * kHc * kHc);
  float* mu = fbuf(m.mu, n * M);
  float* pre = fbuf(m.pre, n * kHc);
  m.act_up.to_device(y, 0, sizeof(float) * n * D);
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
  m.kv_dev.queue_write_back();  // overlaps the head

  // Head: the rows asked for (all, or the last one) are contiguous in X.
  const int64_t n_out = all_logits ? n : 1;
  const float* Xo = X + (n - n_out) * W;
  hc_head(m.dev.hc_head_fn.W, m.dev.hc_head_base.as<float>(), w.hc_head_scale[0], Xo, n_out, D, hc_eps, eps, y, mu,
          pre, m.ms);
  rms_norm(y, m.dev.output_norm.as<float>(), y, n_out, D, eps);
  float* logits = fbuf(m.logits, n_out * c.n_vocab);
  matmul(m.dev.output.W, y, D, n_out, logits, c.n_vocab, m.ms);
  const float* h = fetch(m.act_down, {{logits, n_out * c.n_vocab}});  // waits: reports any fault of the step
  std::vector<float> out(h, h + n_out * c.n_vocab);
  m.kv_dev.write_back(state);
  state.end_eval(tokens, n);
  m.kv_dev.finish(state);
  return out;
}

void GpuEngine::truncate(KVState& state, int64_t n) {
  const DeviceScope on(device_);
  impl_->cpu.truncate(state, n, [this](KVState& s, const int64_t* ids, int64_t k) { eval(s, ids, k, false); });
}

}  // namespace cuda
}  // namespace pyv4
