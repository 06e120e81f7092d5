// Inner loops of attention over cached rows, in fp32: the attention of a
// token's heads over its rows, indexer scoring of many keys against one query,
// and decoding of FP4 indexer keys.
//
// The plain loops in kv_kernels.cpp are the reference; kv_kernels_avx2.cpp has
// AVX2+FMA versions and kv_kernels_avx512.cpp VNNI scoring of FP4 records,
// picked when the CPU has them and the compute mode is "fast"
// (csrc/quant/cpu_features.h). A kernel table is fetched once per call
// of the forward pass, so every row of one eval uses the same kernels and
// results do not depend on how a prompt is split into chunks.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pyv4 {

struct KvKernels {
  // Indexer scores of one query against n keys (spec §3.6):
  //   out[r] = Σ_h w[h] · ReLU(Σ_i qT[i·nih + h] · keys[r][i])
  // qT is the query transposed ([dim][nih]) so that the fast kernel scores
  // many heads per instruction; each key has `dim` floats. The reference sums
  // i in order per head in double, then h in order in float.
  void (*index_scores)(const float* qT, const float* w, int64_t nih, int64_t dim,
                       const float* const* keys, int64_t n, float* out);
  // Attention of nh query heads over one shared set of nk rows (K = V, spec
  // §3.4), with the per-head sink in the denominator only:
  //   out[h] = Σ_j exp(l_hj - m_h) / (exp(sink_h - m_h) + Σ_j' exp(l_hj' - m_h)) · row_j,
  //   l_hj = scale · q_h · row_j, m_h = max(sink_h, max_j l_hj).
  // q and out are [nh][d]; p is scratch of nh·nk floats.
  void (*attend)(const float* q, int64_t nh, int64_t d, const float* const* rows, int64_t nk,
                 const float* sinks, float scale, float* p, float* out);
  // FP4 indexer key record (csrc/kv/qat.h, KVType::FP8) -> width floats; exact,
  // so every kernel gives the same bits.
  void (*decode_fp4)(const uint8_t* src, int64_t width, float* row);
  // FP8 main-row record (decode_fp8_main_row, csrc/kv/qat.h) -> width floats;
  // exact, so every kernel gives the same bits. Attention decodes the window
  // and compressed rows it reads with it, every decode step.
  void (*decode_fp8_main)(const uint8_t* src, int64_t nope, int64_t width, float* row);
  // An indexer query or key of KVType::FP8 rounded in place (spec §3.6:
  // Hadamard, then FP4 QAT in blocks of 32), and when rec is not null its FP4
  // record of rec_bytes (encode_fp4_row, csrc/kv/qat.h). width: a power of two,
  // a multiple of 32. Exact, so every kernel gives the same bits. Runs for every
  // query head of every CSA layer and token.
  void (*index_round_fp4)(float* row, int64_t width, uint8_t* rec, size_t rec_bytes);
  // Scoring straight from FP4 records, AVX-512 VNNI only (null in the other
  // tables; callers then decode keys and use index_scores, which is also the
  // reference: the values are the same, the block dots here exact integers).
  // fp4_query lays out nih query records, `stride` bytes apart (the KVType::FP8
  // index codec's, after index_round_fp4; RowCodec::bytes may pad a record),
  // into prep, fp4_prep_bytes(nih, dim) bytes; then
  // index_scores_fp4 scores n key records against it. Needs nih % 16 == 0,
  // dim % 32 == 0, dim <= 512 (fp4_scoring_fits).
  void (*fp4_query)(const uint8_t* q_recs, int64_t stride, int64_t nih, int64_t dim, uint8_t* prep);
  void (*index_scores_fp4)(const uint8_t* prep, const float* w, int64_t nih, int64_t dim,
                           const uint8_t* const* keys, int64_t n, float* out);
};

inline bool fp4_scoring_fits(int64_t nih, int64_t dim) {
  return nih % 16 == 0 && dim % 32 == 0 && dim <= 512;
}
inline int64_t fp4_prep_bytes(int64_t nih, int64_t dim) { return nih / 16 * (dim / 32) * 640; }

const KvKernels& kv_kernels();          // for the current ISA / compute mode
const KvKernels& kv_kernels_reference();

namespace avx2 {
void index_scores(const float* qT, const float* w, int64_t nih, int64_t dim,
                  const float* const* keys, int64_t n, float* out);
void attend(const float* q, int64_t nh, int64_t d, const float* const* rows, int64_t nk,
            const float* sinks, float scale, float* p, float* out);
void decode_fp4(const uint8_t* src, int64_t width, float* row);
void decode_fp8_main(const uint8_t* src, int64_t nope, int64_t width, float* row);
void index_round_fp4(float* row, int64_t width, uint8_t* rec, size_t rec_bytes);
}  // namespace avx2

namespace avx512 {
void attend(const float* q, int64_t nh, int64_t d, const float* const* rows, int64_t nk,
            const float* sinks, float scale, float* p, float* out);
void fp4_query(const uint8_t* q_recs, int64_t stride, int64_t nih, int64_t dim, uint8_t* prep);
void index_scores_fp4(const uint8_t* prep, const float* w, int64_t nih, int64_t dim,
                      const uint8_t* const* keys, int64_t n, float* out);
}  // namespace avx512

}  // namespace pyv4
