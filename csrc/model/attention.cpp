#include "model/attention.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "common/line_buffer.h"
#include "common/profiler.h"
#include "kv/kv_kernels.h"
#include "model/compressor.h"

namespace pyv4 {

void select_topk(const float* scores, int64_t n_visible, int64_t topk, int64_t* out_idx,
                 int64_t* out_n) {
  const int64_t k = std::min(topk, n_visible);
  std::vector<int64_t> idx(n_visible);
  std::iota(idx.begin(), idx.end(), 0);
  // A strict total order (ties to the lower index), so the k best form one
  // well-defined set: nth_element finds it in O(n), then it is put in row order.
  if (k < n_visible) {
    std::nth_element(idx.begin(), idx.begin() + k, idx.end(), [&](int64_t a, int64_t b) {
      return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
    });
  }
  std::sort(idx.begin(), idx.begin() + k);
  std::copy(idx.begin(), idx.begin() + k, out_idx);
  *out_n = k;
}

namespace {

// One thread's buffers for indexer_select: the query in the scoring kernel's
// layout (qT, or prep for FP4 scoring), decoded keys and a token's scores.
struct IndexerScratch {
  std::vector<float> qT, kbuf, scores;
  std::vector<uint8_t> prep;
};

}  // namespace

std::vector<std::vector<int64_t>> indexer_select(const ModelConfig& c, const LayerWeights& w,
                                                 int64_t il, const RopeTable& rope, float* qI,
                                                 float* wI, const SeqSpan& sp, ThreadPool& pool) {
  const int64_t ratio = w.comp.ratio, n = sp.n, pos0 = sp.pos0;
  KVState& kv = *sp.kv;
  const KvKernels& kk = kv_kernels();
  const int64_t nih = c.index_n_head, ihd = c.index_head_dim;
  const RowCodec& ic = kv.index_codec();
  PROF_SCOPE("indexer.score");
  const float wscale = 1.0f / std::sqrt(static_cast<float>(nih));
  const float qscale = 1.0f / std::sqrt(static_cast<float>(ihd));
  // fp8 on AVX-512: keys are scored straight from their FP4 records against
  // the query encoded the same way (integer block dots, kv_kernels_avx512.cpp).
  const bool fp4_keys = ic.type == KVType::FP8;
  const bool fp4_scoring = fp4_keys && kk.index_scores_fp4 && fp4_scoring_fits(nih, ihd);
  // Kept by the calling thread across calls, as attention_forward's buffers:
  // decode allocated them afresh per CSA layer and token. index_round_fp4
  // writes every byte of a query record.
  // (The pool's threads would see their own thread_locals: the lambdas below
  // use `scratch`, a reference to this thread's.)
  thread_local LineBuffer<uint8_t> qrec_buf;
  thread_local std::vector<IndexerScratch> scratch_buf;
  std::vector<IndexerScratch>& scratch = scratch_buf;
  uint8_t* qrec = fp4_scoring ? qrec_buf.get(n * nih * ic.bytes) : nullptr;
  pool.parallel_for(n * nih, 8, [&](int64_t i0, int64_t i1, int) {
    for (int64_t i = i0; i < i1; ++i) {
      float* qh = &qI[i * ihd];
      rope.apply(qh, ihd, pos0 + i / nih);
      // fp8: the keys' Hadamard + FP4 QAT (spec §3.6), and the record the FP4 scoring reads
      if (fp4_keys) kk.index_round_fp4(qh, ihd, fp4_scoring ? &qrec[i * ic.bytes] : nullptr, ic.bytes);
      wI[i] *= wscale * qscale;
    }
  });
  // Every visible key is scored (keys are small: 68 B in fp8); only the
  // selected compressed rows are read below (offload contract). This is the
  // one part of decode that grows with the context (spec §3.6: O(T/4) keys
  // per CSA layer), so keys go in tiles of kTile and are scored against all
  // heads at once (the float kernel takes the query transposed, the FP4 one
  // its prepared layout).
  constexpr int64_t kTile = 32;
  if (static_cast<int>(scratch.size()) < pool.size()) scratch.resize(pool.size());
  for (IndexerScratch& s : scratch) {
    s.qT.resize(fp4_scoring ? 0 : ihd * nih);
    s.kbuf.resize(fp4_scoring ? 0 : kTile * ihd);
    s.prep.resize(fp4_scoring ? fp4_prep_bytes(nih, ihd) : 0);
  }
  // Token t's query in the kernel's layout, into q.
  auto prepare_query = [&](int64_t t, IndexerScratch& q) {
    if (fp4_scoring) {
      kk.fp4_query(&qrec[t * nih * ic.bytes], ic.bytes, nih, ihd, q.prep.data());
    } else {
      for (int64_t h = 0; h < nih; ++h)
        for (int64_t i = 0; i < ihd; ++i) q.qT[i * nih + h] = qI[(t * nih + h) * ihd + i];
    }
  };
  // Scores of keys b0..b1-1 for token t (query prepared in q; keys decoded into k.kbuf).
  auto score_keys = [&](int64_t t, const IndexerScratch& q, IndexerScratch& k, int64_t b0, int64_t b1,
                        float* scores) {
    for (int64_t b = b0; b < b1; b += kTile) {
      const int64_t m = std::min(kTile, b1 - b);
      if (fp4_scoring) {
        const uint8_t* recs[kTile];
        for (int64_t j = 0; j < m; ++j) recs[j] = kv.index_rec(il, b + j);
        kk.index_scores_fp4(q.prep.data(), &wI[t * nih], nih, ihd, recs, m, &scores[b]);
        continue;
      }
      const float* keys[kTile];
      for (int64_t j = 0; j < m; ++j) {
        const uint8_t* rec = kv.index_rec(il, b + j);
        if (fp4_keys) {
          kk.decode_fp4(rec, ihd, k.kbuf.data() + j * ihd);
          keys[j] = k.kbuf.data() + j * ihd;
        } else {
          keys[j] = ic.view(rec, k.kbuf.data() + j * ihd);
        }
      }
      kk.index_scores(q.qT.data(), &wI[t * nih], nih, ihd, keys, m, &scores[b]);
    }
  };
  std::vector<std::vector<int64_t>> picked(n);
  auto pick = [&](int64_t t, const std::vector<float>& scores, int64_t nb) {
    picked[t].resize(std::min(nb, c.index_topk));
    int64_t k = 0;
    select_topk(scores.data(), nb, c.index_topk, picked[t].data(), &k);
  };
  if (n >= 4 * pool.size()) {
    // A prefill chunk: each thread scores whole tokens (balanced: later tokens
    // see more keys). Splitting each token's keys instead cost a parallel
    // region per token and used one range while a token had at most 64 keys
    // (512-token prefill of the q2 wide file, 2 threads: indexer.score
    // 0.068-0.076 -> 0.062-0.070 s; on more threads the split used fewer of them).
    pool.parallel_for_balanced(n, 1, [&](int64_t t0, int64_t t1, int tid) {
      IndexerScratch& s = scratch[tid];
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t nb = (pos0 + t + 1) / ratio;
        prepare_query(t, s);
        s.scores.resize(nb);
        score_keys(t, s, s, 0, nb, s.scores.data());
        pick(t, s.scores, nb);
      }
    });
    return picked;
  }
  // Decode (a few tokens): each token's keys split over the threads.
  IndexerScratch& q = scratch[0];
  for (int64_t t = 0; t < n; ++t) {
    const int64_t nb = (pos0 + t + 1) / ratio;
    prepare_query(t, q);
    q.scores.resize(nb);
    pool.parallel_for(nb, 64, [&](int64_t b0, int64_t b1, int tid) {
      score_keys(t, q, scratch[tid], b0, b1, q.scores.data());
    });
    pick(t, q.scores, nb);
  }
  return picked;
}

namespace {

// The per-row activations of attention_forward (a 512-token V4-Flash chunk:
// q and o 64 MB each, 160 MB in all): buffers of the calling thread, grown to
// the largest chunk and kept, as moe_forward's (every element is written
// before it is read). Fresh vectors per layer zeroed them and, above glibc's
// mmap threshold, faulted their pages in again every layer (512-token
// prefill of the q2 wide file: 149k page faults, 0.3 s of system time); the
// decoded KV rows too, which decode allocated afresh for every layer of every
// token. pkv / gate serve the main compressor, then the indexer's.
struct AttnBuffers {
  LineBuffer<float> qlat, q, kvr, o, z, pkv, gate, qI, wI;
  std::vector<LineBuffer<float>> wrows, crows;  // per session of the batch: decoded window / compressed rows
};

}  // namespace

void attention_forward(const ModelConfig& c, const LayerWeights& w, int64_t il,
                       const RopeTable& rope, const float* x, const SeqSpan* seqs, int64_t n_seqs,
                       int64_t n, float* out, ThreadPool& pool) {
  const int64_t D = c.n_embd, H = c.n_head, d = c.head_dim, QL = c.q_lora_rank;
  const float eps = static_cast<float>(c.rms_eps);
  const KvKernels& kk = kv_kernels();
  // Row -> its session's span, and the row's position in that session.
  std::vector<int32_t> seq_of(n);
  std::vector<int64_t> pos(n);
  for (int64_t s = 0; s < n_seqs; ++s) {
    for (int64_t t = 0; t < seqs[s].n; ++t) {
      seq_of[seqs[s].row0 + t] = static_cast<int32_t>(s);
      pos[seqs[s].row0 + t] = seqs[s].pos0 + t;
    }
  }

  // Q path: q_lat = q_norm(wq_a x); q = wq_b q_lat; per-head RMS; RoPE at P.
  // KV path: one shared K = V head, kvr = wkv x (one region with wq_a: both read x).
  thread_local AttnBuffers buf;
  float* qlat = buf.qlat.get(n * QL);
  float* q = buf.q.get(n * H * d);
  float* kvr = buf.kvr.get(n * d);
  {
    PROF_SCOPE("matmul.attn_q");
    const MatmulTask t[2] = {{&w.wq_a, x, D, n, qlat, QL}, {&w.wkv, x, D, n, kvr, d}};
    matmul_many(t, 2, pool);
    rms_norm_rows(qlat, w.q_norm.data(), qlat, n, QL, eps, pool);
    matmul(w.wq_b, qlat, QL, n, q, H * d, pool);
  }
  {
  PROF_SCOPE("attn.qk_norm_rope");
  // Items: n·H query heads, then the n KV rows.
  pool.parallel_for(n * (H + 1), 8, [&](int64_t i0, int64_t i1, int) {
    for (int64_t i = i0; i < i1; ++i) {
      if (i < n * H) {
        float* qh = &q[i * d];
        rms_norm(qh, nullptr, qh, d, eps);
        rope.apply(qh, d, pos[i / H]);
        continue;
      }
      const int64_t t = i - n * H;
      float* k = &kvr[t * d];
      rms_norm(k, w.kv_norm.data(), k, d, eps);
      rope.apply(k, d, pos[t]);
      // Storage rounding (spec §3.4 step 3 in fp8: act_quant of the nope dims),
      // also for this token's own attention, as in the official code.
      seqs[seq_of[t]].kv->main_codec().round(k);
    }
  });
  }

  // Compressors run before attention: a block closed by a token of this chunk
  // is visible to that token (spec §3.5 visibility). Projections for the whole
  // batch, then each session's own rolling state.
  const int64_t ratio = w.kind != AttnKind::Sliding ? w.comp.ratio : 0;
  if (ratio) {
    const int64_t pw = w.comp.kv.rows;
    float* pkv = buf.pkv.get(n * pw);
    float* gate = buf.gate.get(n * pw);
    compressor_project(c, w.comp, x, n, pkv, gate, /*indexer=*/false, pool);
    for (int64_t s = 0; s < n_seqs; ++s) {
      const SeqSpan& sp = seqs[s];
      compressor_update(c, w.comp, rope, &pkv[sp.row0 * pw], &gate[sp.row0 * pw], sp.n, sp.pos0, *sp.kv,
                        il, /*indexer=*/false);
    }
  }
  // CSA: the indexer's selected blocks for each row.
  std::vector<std::vector<int64_t>> picked(w.kind == AttnKind::CSA ? n : 0);
  if (w.kind == AttnKind::CSA) {
    const int64_t pw = w.index_comp.kv.rows, nih = c.index_n_head, ihd = c.index_head_dim;
    float* pkv = buf.pkv.get(n * pw);  // the main compressor's update is done with them
    float* gate = buf.gate.get(n * pw);
    compressor_project(c, w.index_comp, x, n, pkv, gate, /*indexer=*/true, pool);
    float* qI = buf.qI.get(n * nih * ihd);
    float* wI = buf.wI.get(n * nih);
    {
      PROF_SCOPE("matmul.indexer");
      const MatmulTask t[2] = {{&w.index_q_b, qlat, QL, n, qI, nih * ihd},
                               {&w.index_proj, x, D, n, wI, nih}};
      matmul_many(t, 2, pool);
    }
    for (int64_t s = 0; s < n_seqs; ++s) {
      const SeqSpan& sp = seqs[s];
      compressor_update(c, w.index_comp, rope, &pkv[sp.row0 * pw], &gate[sp.row0 * pw], sp.n, sp.pos0,
                        *sp.kv, il, /*indexer=*/true);
      auto sel = indexer_select(c, w, il, rope, &qI[sp.row0 * nih * ihd], &wI[sp.row0 * nih], sp, pool);
      std::move(sel.begin(), sel.end(), picked.begin() + sp.row0);
      sp.kv->layer(il).touch.index_keys += (sp.pos0 + sp.n) / ratio;
    }
  }

  // Rows each session's queries read, each decoded once: the stored window rows
  // before pos0, and the compressed rows (HCA: all visible; CSA: the union of
  // the selected ones). F32 rows are read in place.
  struct Gathered {
    int64_t w_first = 0;
    std::vector<const float*> wptr, cptr;
  };
  std::vector<Gathered> gath(n_seqs);
  if (static_cast<int64_t>(buf.wrows.size()) < n_seqs) buf.wrows.resize(n_seqs), buf.crows.resize(n_seqs);
  ProfScope prof_gather("attn.gather");
  for (int64_t s = 0; s < n_seqs; ++s) {
    const SeqSpan& sp = seqs[s];
    KVState& kv = *sp.kv;
    const RowCodec& mc = kv.main_codec();
    Gathered& g = gath[s];
    const int64_t pos0 = sp.pos0;
    g.w_first = std::max<int64_t>(0, pos0 - c.window + 1);
    float* wbuf = mc.type == KVType::F32 ? nullptr : buf.wrows[s].get((pos0 - g.w_first) * d);
    g.wptr.resize(pos0 - g.w_first);
    pool.parallel_for(pos0 - g.w_first, 16, [&](int64_t i0, int64_t i1, int) {
      for (int64_t i = i0; i < i1; ++i)
        g.wptr[i] = mc.view(kv.window_rec(il, g.w_first + i), wbuf ? wbuf + i * d : nullptr);
    });
    LayerState& st = kv.layer(il);
    st.touch.window += pos0 - g.w_first;
    if (!ratio) continue;
    const int64_t nb_last = (pos0 + sp.n) / ratio;  // rows visible to the span's last query
    g.cptr.assign(nb_last, nullptr);
    std::vector<int64_t> need;
    if (w.kind == AttnKind::HCA) {
      need.resize(nb_last);
      std::iota(need.begin(), need.end(), 0);
    } else {
      std::vector<char> mark(nb_last, 0);
      for (int64_t t = 0; t < sp.n; ++t) for (int64_t b : picked[sp.row0 + t]) mark[b] = 1;
      for (int64_t b = 0; b < nb_last; ++b) if (mark[b]) need.push_back(b);
    }
    float* cbuf = mc.type == KVType::F32 ? nullptr : buf.crows[s].get(need.size() * d);
    pool.parallel_for(static_cast<int64_t>(need.size()), 16, [&](int64_t i0, int64_t i1, int) {
      for (int64_t i = i0; i < i1; ++i) g.cptr[need[i]] = mc.view(kv.comp_rec(il, need[i]), cbuf ? cbuf + i * d : nullptr);
    });
    st.touch.compressed += static_cast<int64_t>(need.size());
  }

  prof_gather.stop();
  // Softmax over window ∪ visible compressed rows, with the per-head sink.
  ProfScope prof_core("attn.core");
  float* o = buf.o.get(n * H * d);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  // Tasks of (row, 4 heads) over the whole batch: the heads of one token share
  // its rows (K = V), which the kernel reads once per 4 heads. Balanced: in a
  // prefill from position 0 later tokens see more rows (the window fills, CSA
  // and HCA rows accrue), so equal ranges left the first thread waiting
  // (512-token prefill of the q2 wide file, 2 threads: 0.41-0.49 -> 0.38-0.40 s).
  constexpr int64_t kHeads = 4;
  const int64_t nhb = (H + kHeads - 1) / kHeads;
  pool.parallel_for_balanced(n * nhb, 1, [&](int64_t i0, int64_t i1, int) {
    std::vector<const float*> keys;
    std::vector<float> p;
    int64_t t_keys = -1;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t t = i / nhb, h0 = (i % nhb) * kHeads, nh = std::min(kHeads, H - h0);
      const SeqSpan& sp = seqs[seq_of[t]];
      const Gathered& g = gath[seq_of[t]];
      const int64_t P = pos[t];
      if (t != t_keys) {
        keys.clear();
        for (int64_t j = std::max<int64_t>(0, P - c.window + 1); j <= P; ++j) {
          keys.push_back(j >= sp.pos0 ? &kvr[(sp.row0 + j - sp.pos0) * d] : g.wptr[j - g.w_first]);
        }
        if (w.kind == AttnKind::HCA) {
          const int64_t nb = (P + 1) / ratio;
          for (int64_t b = 0; b < nb; ++b) keys.push_back(g.cptr[b]);
        } else if (w.kind == AttnKind::CSA) {
          for (int64_t b : picked[t]) keys.push_back(g.cptr[b]);
        }
        p.resize(kHeads * keys.size());
        t_keys = t;
      }
      float* oh = &o[(t * H + h0) * d];
      kk.attend(&q[(t * H + h0) * d], nh, d, keys.data(), static_cast<int64_t>(keys.size()),
                &w.sinks[h0], scale, p.data(), oh);
      // V carried RoPE (K = V); undo it.
      for (int64_t h = 0; h < nh; ++h) rope.apply(oh + h * d, d, P, /*inverse=*/true);
    }
  });

  prof_core.stop();
  ProfScope prof_kv("kv.write");
  for (int64_t s = 0; s < n_seqs; ++s) {
    const SeqSpan& sp = seqs[s];
    const float* rows = &kvr[sp.row0 * d];
    // Snapshots (window ring image + rolling state) at every snap_every-th
    // position of this span, taken before the span overwrites ring slots.
    sp.kv->commit_snapshots(il, sp.pos0, sp.n, rows);
    // The span's rows enter the window ring only now: earlier queries of this
    // span read older ring slots that these would overwrite.
    for (int64_t t = std::max<int64_t>(0, sp.n - c.window); t < sp.n; ++t) {
      sp.kv->write_window(il, sp.pos0 + t, rows + t * d);
    }
  }

  prof_kv.stop();
  PROF_SCOPE("matmul.attn_out");
  // Grouped low-rank output: z_g = W_oa[g] · concat(heads of group g); out = wo_b z.
  const int64_t G = c.o_groups, OL = c.o_lora_rank, gw = H * d / G;
  float* z = buf.z.get(n * G * OL);
  std::vector<WeightMatrix> wo_a(G);
  std::vector<MatmulTask> groups(G);
  for (int64_t g = 0; g < G; ++g) {
    wo_a[g] = w.wo_a.row_slice(g * OL, OL);
    groups[g] = {&wo_a[g], o + g * gw, H * d, n, z + g * OL, G * OL};
  }
  matmul_many(groups.data(), G, pool);
  matmul(w.wo_b, z, G * OL, n, out, D, pool);
}

}  // namespace pyv4
