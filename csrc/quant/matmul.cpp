// matmul dispatch: picks the reference path or the SIMD kernels of the active
// ISA (quant/cpu_features.h), quantizes the activations once per call for the
// integer kernels, and splits the weight rows across the thread pool.
#include "quant/matmul.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "common/error.h"
#include "common/line_buffer.h"
#include "quant/cpu_features.h"
#include "quant/kernels.h"
#include "quant/split_layout.h"

namespace pyv4 {

namespace {

bool is_matmul_type(GGMLType t) {
  switch (t) {
    case GGMLType::F32:
    case GGMLType::F16:
    case GGMLType::BF16:
    case GGMLType::Q8_0:
    case GGMLType::Q4_0:
    case GGMLType::IQ4_NL:
    case GGMLType::Q4_K:
    case GGMLType::MXFP4:
      return true;
    default:
      return qk::is_lowbit(t);
  }
}

// Reference: decode each weight row to fp32 once with the scalar oracle, then
// a plain sequential fp32 dot with every token.
void reference_rows(const WeightMatrix& W, const float* X, int64_t ldx, int64_t n_tokens,
                    float* Y, int64_t ldy, int64_t r0, int64_t r1) {
  thread_local std::vector<float> row;
  if (static_cast<int64_t>(row.size()) < W.cols) row.resize(W.cols);
  for (int64_t r = r0; r < r1; ++r) {
    const float* w;
    if (W.type == GGMLType::F32) {
      w = reinterpret_cast<const float*>(W.row(r));
    } else {
      dequantize_row(W.type, W.row(r), row.data(), W.cols);
      w = row.data();
    }
    for (int64_t t = 0; t < n_tokens; ++t) {
      const float* x = X + t * ldx;
      float s = 0.0f;
      for (int64_t i = 0; i < W.cols; ++i) s += w[i] * x[i];
      Y[t * ldy + r] = s;
    }
  }
}

}  // namespace

namespace qk {
uint8_t* scratch_bytes(size_t bytes) {
  thread_local LineBuffer<uint8_t> buf;
  buf.resize(bytes);
  return buf.data();
}

bool vbmi_kernels(GGMLType t) {
  const CpuFeatures& f = cpu_features();
  if (!avx512_extensions() || !f.avx512vbmi) return false;
  switch (t) {
    case GGMLType::IQ2_XXS: return f.gfni;  // gemv_iq2xxs_avx512.cpp
    case GGMLType::IQ2_XS:
    case GGMLType::IQ2_S: return true;  // gemv_iq2s_avx512.cpp
    case GGMLType::IQ3_XXS:
    case GGMLType::IQ3_S: return f.avx512bitalg;  // gemv_iq3_avx512.cpp
    default: return false;
  }
}
}  // namespace qk

namespace {

// Per-thread scratch for the quantized activations; grows once, never shrinks.
struct ActScratch {
  LineBuffer<int8_t> qs;
  LineBuffer<float> dx, cs, dxr, csr, hs;
};

struct Job {
  const WeightMatrix* W;
  const qk::ActQ* act;
  const float* X;
  int64_t ldx, n_tokens, ldy;
  float* Y;
  Isa isa;
  bool reference;
};

using GemvFn = void (*)(const WeightMatrix&, const qk::ActQ&, int64_t, float*, int64_t, int64_t, int64_t);

// The AVX-512 GEMV a low-bit type has of its own, if any (a row at a time,
// tokens in groups of up to 3: gemv_rows_by_tokens), and the token count from
// which the lane GEMM takes over. Some need more than the AVX-512 set (VBMI,
// GFNI, BITALG); set_avx512_extensions(false) falls back to the AVX-512-set
// kernels as on a CPU without them, with the lane GEMM from lane_min_tokens.
// Where lane_from > 4 the GEMV's groups of 3 beat the lane GEMM, which a
// prefill meets when a chunk routes a few tokens to each expert. Measured (Zen 4,
// [2048x4096] cycled from DRAM, 2 threads, old / new build alternated, ns of wall
// time per super-block, lane / GEMV): IQ2_XXS 4 tokens 15.7 / 7.9, 6: 21.2 / 10.0,
// 9: 18.2 / 16.4, 12: 21.5 / 23.9; IQ3_XXS 4: 22.4 / 13.0, 9: 26.2 / 24.2, 12:
// 29.0 / 30.9; IQ3_S 6: 26.0 / 18.9, 8: 29.4 / 29.2; IQ1_M 6: 34.6 / 27.4, 8: 43.2
// / 40.3 (L2-resident, 1 thread: 75.8 / 82.7); Q2_K 4: 11.1 / 10.0, 6: 13.2 /
// 15.4; IQ1_S loses from 4 (14.1 / 23.3). IQ2_XS and IQ2_S tied at 4-6 until their GEMV
// issued its lookups a pair ahead (2026-12-06, same host and measure): IQ2_XS 4 tokens
// 15.8-16.1 / 11.8-12.5, 6: 18.7-18.8 / 14.4-14.8, 8: 20.3-20.4 / 20.9-21.1; IQ2_S 4:
// 16.0 / 13.6-15.0, 6: 18.6-18.8 / 16.6-17.6, 8: 20.3-20.5 / 23.5-25.1. IQ2_XXS once its
// lane packer decoded by the GEMV's permutes (pack_iq2xxs_lane_avx512) instead of grid
// gathers: 6: 10.0-10.5 / 8.8-10.2, 7: 10.8-10.9 / 11.6-11.9, 8: 11.5-11.8 / 13.5-13.8;
// IQ3_XXS once its packer looked its magnitudes up likewise: 5: 13.7-14.0 / 12.4, 6:
// 13.8-13.9 / 13.5-13.6, 7: 14.5-14.7 / 18.3, 9: 16.6-16.9 / 19.8-20.6.
// L2-resident matrices ([512x4096], 1 thread) put the crossovers 1-2
// tokens lower; the lane_from below follow the DRAM case, a prefill's.
struct OwnGemv {
  GemvFn fn = nullptr;
  int64_t lane_from = 0;
};

OwnGemv own_gemv_avx512(GGMLType t) {
  const bool vbmi = qk::vbmi_kernels(t);
  switch (t) {
    case GGMLType::Q2_K: return {qk::gemv_q2k_avx512, 5};
    case GGMLType::IQ1_S: return {qk::gemv_iq1_avx512, 4};
    case GGMLType::IQ1_M: return {qk::gemv_iq1_avx512, 8};
    case GGMLType::IQ2_XXS: return vbmi ? OwnGemv{qk::gemv_iq2xxs_avx512, 7} : OwnGemv{};
    case GGMLType::IQ2_XS:
    case GGMLType::IQ2_S: return vbmi ? OwnGemv{qk::gemv_iq2s_avx512, 7} : OwnGemv{};
    case GGMLType::IQ3_XXS: return vbmi ? OwnGemv{qk::gemv_iq3_avx512, 7} : OwnGemv{};
    case GGMLType::IQ3_S: return vbmi ? OwnGemv{qk::gemv_iq3_avx512, 8} : OwnGemv{};
    default: return {};
  }
}

int64_t lane_from_avx512(GGMLType t) {
  const OwnGemv own = own_gemv_avx512(t);
  return own.fn ? own.lane_from : qk::lane_min_tokens(t);
}

void run_rows(const Job& j, int64_t r0, int64_t r1) {
  if (j.W->split && (j.reference || j.isa != Isa::AVX512)) {
    // Only the AVX-512 kernels read split rows (a split matrix meets the others
    // when the ISA or compute mode changed after loading): restore GGML rows,
    // 16 at a time, and run the same job on them.
    thread_local LineBuffer<uint8_t> buf;
    WeightMatrix v = *j.W;
    v.split = false;
    v.row_stride = row_bytes(v.type, v.cols);
    buf.resize(16 * v.row_stride);
    v.data = buf.data();
    Job jv = j;
    jv.W = &v;
    for (int64_t r = r0; r < r1; r += 16) {
      v.rows = std::min<int64_t>(16, r1 - r);
      for (int64_t i = 0; i < v.rows; ++i)
        split::unsplit_row(v.type, v.cols, j.W->row(r + i), buf.data() + i * v.row_stride);
      jv.Y = j.Y + r;
      run_rows(jv, 0, v.rows);
    }
    return;
  }
  if (j.reference) {
    reference_rows(*j.W, j.X, j.ldx, j.n_tokens, j.Y, j.ldy, r0, r1);
  } else if (j.act && j.act->layout == qk::ActLayout::Lane) {
    if (j.isa == Isa::AVX512)
      qk::gemm_lane_avx512(*j.W, *j.act, j.n_tokens, j.Y, j.ldy, r0, r1);
    else
      qk::gemm_lane_avx2(*j.W, *j.act, j.n_tokens, j.Y, j.ldy, r0, r1);
  } else if (qk::is_lowbit(j.W->type)) {
    // (the activations are not in the lane layout: fewer tokens than lane_from)
    const GemvFn own = j.isa == Isa::AVX512 ? own_gemv_avx512(j.W->type).fn : nullptr;
    if (own)
      own(*j.W, *j.act, j.n_tokens, j.Y, j.ldy, r0, r1);
    else if (j.isa == Isa::AVX512)
      qk::gemm_lowbit_avx512(*j.W, *j.act, j.n_tokens, j.Y, j.ldy, r0, r1);
    else
      qk::gemm_lowbit_avx2(*j.W, *j.act, j.n_tokens, j.Y, j.ldy, r0, r1);
  } else if (j.isa == Isa::AVX512) {
    qk::gemm_avx512(*j.W, j.act, j.X, j.ldx, j.n_tokens, j.Y, j.ldy, r0, r1);
  } else {
    qk::gemm_avx2(*j.W, j.act, j.X, j.ldx, j.n_tokens, j.Y, j.ldy, r0, r1);
  }
}

// Fills job (and the activation scratch s) for one call.
void prepare(const WeightMatrix& W, const float* X, int64_t ldx, int64_t n_tokens, float* Y,
             int64_t ldy, Job* job, qk::ActQ* act, ActScratch& s, ThreadPool* pool) {
  if (!is_matmul_type(W.type))
    throw FormatError(std::string("matmul: ") + type_name(W.type) + " is not a weight type");
  const Isa isa = active_isa();
  job->W = &W;
  job->act = nullptr;
  job->X = X;
  job->ldx = ldx;
  job->n_tokens = n_tokens;
  job->Y = Y;
  job->ldy = ldy;
  job->isa = isa;
  job->reference = compute_mode() == ComputeMode::Reference || isa == Isa::Scalar;
  if (job->reference) return;
  float cscale = 0.0f;
  qk::ActLayout layout = qk::ActLayout::Plain;
  bool quantize, lane_hs = false;
  if (isa == Isa::AVX512 && n_tokens >= lane_from_avx512(W.type)) {
    quantize = qk::lane_cscale_avx512(W.type, &cscale);
    layout = qk::ActLayout::Lane;
  } else if (isa == Isa::AVX2 && n_tokens >= qk::kLaneMinTokensAvx2 &&
             qk::lane_cscale_avx2(W.type, &cscale, &lane_hs)) {
    quantize = true;
    layout = qk::ActLayout::Lane;
  } else if (qk::is_lowbit(W.type)) {
    layout = qk::lowbit_layout(isa == Isa::AVX512);
    cscale = qk::lowbit_cscale(W.type, layout);
    quantize = true;
  } else if (isa == Isa::AVX512) {
    quantize = qk::act_cscale_avx512(W.type, &cscale);
    layout = qk::ActLayout::Quad;
  } else {
    quantize = qk::act_cscale_avx2(W.type, &cscale);
  }
  if (!quantize) return;
  const int64_t nb = W.cols / 32, nb_pad = qk::act_nb_pad(nb, layout);
  const size_t nq = static_cast<size_t>(n_tokens * nb_pad * 32);
  const size_t nf = static_cast<size_t>(n_tokens * nb_pad);
  s.qs.resize(nq);  // LineBuffer grows only
  s.dx.resize(nf);
  s.cs.resize(nf);
  const bool quad = layout == qk::ActLayout::Quad;
  const int64_t nbr = (nb + 15) & ~int64_t(15);
  const size_t nr = static_cast<size_t>(n_tokens * nbr);
  if (quad) s.dxr.resize(nr), s.csr.resize(nr);
  const bool half_sums = isa == Isa::AVX2 && layout == qk::ActLayout::Lane ? lane_hs
                                                                           : qk::lowbit_half_sums(W.type, layout);
  if (half_sums) s.hs.resize(static_cast<size_t>(n_tokens * 2 * nb_pad));
  // Tokens are quantized independently: a prefill chunk splits them across the
  // pool (serially, this took ~7 % of a 128-token GEMM on 2 threads).
  int8_t* qs = s.qs.data();
  float *dx = s.dx.data(), *cs = s.cs.data();
  float *dxr = quad ? s.dxr.data() : nullptr, *csr = quad ? s.csr.data() : nullptr;
  float* hs = half_sums ? s.hs.data() : nullptr;
  auto quantize_tokens = [&](int64_t t0, int64_t t1, int) {
    qk::quantize_act_avx2(X + t0 * ldx, ldx, t1 - t0, W.cols, cscale, layout, qs + t0 * nb_pad * 32,
                          dx + t0 * nb_pad, cs + t0 * nb_pad, dxr ? dxr + t0 * nbr : nullptr,
                          csr ? csr + t0 * nbr : nullptr);
    if (hs)
      qk::half_sums_avx2(qs + t0 * nb_pad * 32, dx + t0 * nb_pad, t1 - t0, nb, nb_pad, layout,
                         hs + t0 * 2 * nb_pad);
  };
  if (pool && pool->size() > 1 && n_tokens >= 8)
    pool->parallel_for(n_tokens, 1, quantize_tokens);
  else
    quantize_tokens(0, n_tokens, 0);
  act->dxr = dxr;
  act->csr = csr;
  act->hs = hs;
  act->nbr = nbr;
  act->layout = layout;
  act->n_tokens = n_tokens;
  act->nb = nb;
  act->nb_pad = nb_pad;
  act->qs = qs;
  act->dx = dx;
  act->cs = cs;
  job->act = act;
}

}  // namespace


int64_t lane_gemm_min_tokens(GGMLType t) {
  float cscale;
  bool hs;
  if (compute_mode() == ComputeMode::Reference) return 0;
  if (active_isa() == Isa::AVX512) return qk::lane_cscale_avx512(t, &cscale) ? lane_from_avx512(t) : 0;
  if (active_isa() == Isa::AVX2) return qk::lane_cscale_avx2(t, &cscale, &hs) ? qk::kLaneMinTokensAvx2 : 0;
  return 0;
}

void matmul_serial(const WeightMatrix& W, const float* X, int64_t ldx, int64_t n_tokens, float* Y,
                   int64_t ldy) {
  if (W.rows <= 0 || n_tokens <= 0) return;
  Job job;
  qk::ActQ act;
  thread_local ActScratch s;
  prepare(W, X, ldx, n_tokens, Y, ldy, &job, &act, s, nullptr);
  run_rows(job, 0, W.rows);
}

namespace {
std::atomic<MatmulObserver*> g_observer{nullptr};
}  // namespace

void set_matmul_observer(MatmulObserver* observer) { g_observer.store(observer); }

void observe_matmul(const WeightMatrix& W, const float* X, int64_t ldx, int64_t n_tokens) {
  if (MatmulObserver* o = g_observer.load(std::memory_order_relaxed)) o->observe(W, X, ldx, n_tokens);
}

void matmul(const WeightMatrix& W, const float* X, int64_t ldx, int64_t n_tokens, float* Y,
            int64_t ldy, ThreadPool& pool) {
  if (W.rows <= 0 || n_tokens <= 0) return;
  observe_matmul(W, X, ldx, n_tokens);
  Job job;
  qk::ActQ act;
  thread_local ActScratch s;
  prepare(W, X, ldx, n_tokens, Y, ldy, &job, &act, s, &pool);
  pool.parallel_for_balanced(W.rows, 16, [&job](int64_t r0, int64_t r1, int) { run_rows(job, r0, r1); });
}

void matmul_many(const MatmulTask* tasks, int64_t n_tasks, ThreadPool& pool) {
  for (int64_t i = 0; i < n_tasks; ++i) observe_matmul(*tasks[i].W, tasks[i].X, tasks[i].ldx, tasks[i].n_tokens);
  // Grown once and kept, like the scratch of matmul (called from one thread).
  thread_local std::vector<Job> jobs;
  thread_local std::vector<qk::ActQ> acts;
  thread_local std::vector<ActScratch> scratch;
  thread_local std::vector<int64_t> weight;  // units per row
  if (static_cast<int64_t>(jobs.size()) < n_tasks) {
    jobs.resize(n_tasks);
    acts.resize(n_tasks);
    scratch.resize(n_tasks);  // moves keep each buffer, so earlier ActQ pointers stay valid
    weight.resize(n_tasks);
  }
  int64_t max_tokens = 1;
  for (int64_t i = 0; i < n_tasks; ++i) {
    const MatmulTask& t = tasks[i];
    if (t.W->rows <= 0 || t.n_tokens <= 0) {  // nothing to do: an empty span
      jobs[i] = Job{t.W, nullptr, t.X, t.ldx, 0, t.ldy, t.Y, Isa::Scalar, true};
      continue;
    }
    int64_t same = -1;
    for (int64_t j = 0; j < i && same < 0; ++j) {
      const MatmulTask& u = tasks[j];
      if (u.X == t.X && u.ldx == t.ldx && u.n_tokens == t.n_tokens && u.W->cols == t.W->cols &&
          u.W->type == t.W->type)
        same = j;
    }
    if (same >= 0) {
      jobs[i] = jobs[same];  // shares acts[same]
      jobs[i].W = t.W;
      jobs[i].Y = t.Y;
      jobs[i].ldy = t.ldy;
    } else {
      prepare(*t.W, t.X, t.ldx, t.n_tokens, t.Y, t.ldy, &jobs[i], &acts[i], scratch[i], &pool);
    }
    max_tokens = std::max(max_tokens, t.n_tokens);
  }
  // What a row costs, in units the threads split evenly. Decode (every task
  // 1..3 tokens) streams weight bytes, so a row weighs its cache lines times its
  // tokens: an MXFP4 row in the split layout costs about half a Q8_0 row of the
  // same width (the shared expert), and a split by rows gave one thread ~13 %
  // more bytes. Otherwise a row weighs its tokens (the kernels are bound by
  // arithmetic, the same per row of one width).
  const bool streaming = max_tokens <= 3;
  int64_t units = 0, max_weight = 1;
  for (int64_t i = 0; i < n_tasks; ++i) {
    const int64_t n = jobs[i].n_tokens;
    weight[i] = streaming ? n * static_cast<int64_t>((tasks[i].W->row_stride + 63) / 64) : n;
    units += tasks[i].W->rows * weight[i];
    max_weight = std::max(max_weight, weight[i]);
  }
  // Unit u of task i belongs to row u / w: a row goes to the thread whose range
  // holds its first unit (ceil on both ends of the intersection).
  // (The workers see their own thread_local `jobs`: hand them this thread's.)
  const Job* job = jobs.data();
  const int64_t* w = weight.data();
  pool.parallel_for_balanced(units, 16 * max_weight, [&, job, w](int64_t u0, int64_t u1, int) {
    int64_t base = 0;
    for (int64_t i = 0; i < n_tasks && base < u1; ++i) {
      const int64_t span = job[i].W->rows * w[i];
      const int64_t a = std::max(u0, base), b = std::min(u1, base + span);
      if (a < b) {
        const int64_t r0 = (a - base + w[i] - 1) / w[i], r1 = (b - base + w[i] - 1) / w[i];
        if (r0 < r1) run_rows(job[i], r0, r1);
      }
      base += span;
    }
  });
}

}  // namespace pyv4
