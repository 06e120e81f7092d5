// Internal interface between the dispatcher (matmul.cpp) and the per-ISA kernel
// files (kernels_avx2.cpp, kernels_avx512.cpp). Not part of the public API.
//
// Integer kernels (Q8_0, Q4_0, IQ4_NL, Q4_K, MXFP4; Q2_K, Q3_K, IQ2_XXS below) work on
// activations quantized per token in blocks of 32 (Q8_0-like): x ~= dx[b] * q[32b + i] with
// dx[b] = max|x| / 127 and q = round-to-nearest-even(x / dx[b]) in [-127, 127].
// Each weight block is read as unsigned codes u with value = dw * (u - k) (or,
// for Q4_K, dw_i * u - mw_i; on AVX2 Q8_0's and IQ4_NL's signed values times q
// with q's sign flipped where the value is negative, k = 0), so that
//     sum_i w_i x_i = dw * dx * (sum_i u_i q_i) - k * dw * (dx * sum_i q_i)
// and the second term uses cs[b] = cscale * dx[b] * sum_i q[32b + i], computed
// once per token.
//
// Two byte layouts of the quantized activations (the kernel asks for one):
//  * plain: block b occupies bytes [32b, 32b+32) of the token's row;
//  * quad (AVX-512): blocks are grouped by 4; group g occupies [128g, 128g+128):
//    bytes 0..63 hold elements 0..15 of blocks 4g..4g+3 (16 each), bytes 64..127
//    hold their elements 16..31. Two chained vpdpbusd then sum exactly the 32
//    products of each block into 4 int32 lanes, so the float work per block halves.
//  * lane (AVX-512 prefill GEMM, gemm_lane_avx512.cpp): blocks are grouped by 16;
//    group g occupies [512g, 512g+512): bytes 64k + 4j .. 64k + 4j + 3 hold elements
//    4k..4k+3 of block 16g+j (k = 0..7, j = 0..15). Eight chained vpdpbusd leave
//    each block's exact 32-element dot in its own int32 lane (one float step per
//    16 blocks). nb_pad is a multiple of 16 and cs = k * dx * sum(q) (one lane
//    per block).
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant/matmul.h"

namespace pyv4 {
namespace qk {

enum class ActLayout { Plain = 0, Quad = 1, Lane = 2 };

struct ActQ {
  int64_t n_tokens = 0;
  int64_t nb = 0;      // blocks of 32 per token
  int64_t nb_pad = 0;  // nb rounded up to a multiple of 4 (lane: 16); padding blocks are all zero
  ActLayout layout = ActLayout::Plain;
  const int8_t* qs = nullptr;  // [n_tokens][nb_pad * 32]
  const float* dx = nullptr;   // [n_tokens][nb_pad]
  const float* cs = nullptr;   // [n_tokens][nb_pad]  cscale * dx * sum(q)
  // Quad layout only: dx and cs of each 16 blocks reordered for the GEMV
  // kernels, which sum the 4 lanes of each block of 4 quad groups into one
  // zmm whose dword 4L + d is block 4d + L: xr[16s + 4L + d] = x[16s + 4d + L],
  // [n_tokens][nbr], nbr = nb rounded up to 16 (zeros past nb). csr holds 4 * cs
  // (the offset of all 4 lanes of a block).
  const float* dxr = nullptr;
  const float* csr = nullptr;
  int64_t nbr = 0;
  // Q2_K / Q3_K only: hs[t][s] = dx[s / 2] * (sum of q over elements 16s..16s+15),
  // one float per 16-element sub-block, [n_tokens][2 * nb_pad] (zeros past 2 * nb).
  const float* hs = nullptr;

  const int8_t* q(int64_t t) const { return qs + t * nb_pad * 32; }
  const float* d(int64_t t) const { return dx + t * nb_pad; }
  const float* c(int64_t t) const { return cs + t * nb_pad; }
  const float* dr(int64_t t) const { return dxr + t * nbr; }
  const float* cr(int64_t t) const { return csr + t * nbr; }
  const float* h(int64_t t) const { return hs + t * 2 * nb_pad; }
};

static inline int64_t act_nb_pad(int64_t nb, ActLayout layout) {
  return layout == ActLayout::Lane ? (nb + 15) & ~int64_t(15) : (nb + 3) & ~int64_t(3);
}

// Thread-local, 64-byte aligned scratch of at least `bytes`, grown once and kept
// (matmul.cpp, compiled for the baseline ISA: the ISA-specific files must not
// instantiate library templates, see CMakeLists.txt).
uint8_t* scratch_bytes(size_t bytes);

// ---- AVX2 + FMA + F16C (kernels_avx2.cpp) ----
// For an integer weight type: the cscale its kernel needs (k/8 for a code offset
// k, 1 for Q4_K). Returns false for float weight types (no activation quantization).
bool act_cscale_avx2(GGMLType t, float* cscale);
// Quantizes X into buffers sized as ActQ describes (any layout; dxr/csr are
// written for the quad layout only and may be null otherwise).
void quantize_act_avx2(const float* X, int64_t ldx, int64_t n_tokens, int64_t cols, float cscale,
                       ActLayout layout, int8_t* qs, float* dx, float* cs, float* dxr,
                       float* csr);
// Y[t, r] for r in [r0, r1), all tokens. act is null for float weight types.
void gemm_avx2(const WeightMatrix& W, const ActQ* act, const float* X, int64_t ldx,
               int64_t n_tokens, float* Y, int64_t ldy, int64_t r0, int64_t r1);
uint64_t read_sum_avx2(const uint8_t* p, size_t bytes);
// Float weights (F32, F16, BF16) on AVX2 (gemm_float_avx2.cpp, from gemm_avx2):
// fp32 FMA dots whose per-(row, token) order does not depend on the batch.
void gemm_float_avx2(const WeightMatrix& W, const float* X, int64_t ldx, int64_t n_tokens,
                     float* Y, int64_t ldy, int64_t r0, int64_t r1);

// ---- AVX-512 F/BW/VL/DQ + VNNI (kernels_avx512.cpp) ----
// Same contract as act_cscale_avx2; these kernels want the quad layout.
bool act_cscale_avx512(GGMLType t, float* cscale);
void gemm_avx512(const WeightMatrix& W, const ActQ* act, const float* X, int64_t ldx,
                 int64_t n_tokens, float* Y, int64_t ldy, int64_t r0, int64_t r1);
// `iters` x 12 independent vpdpbusd zmm (the int8 peak probe, bandwidth.cpp).
uint64_t vnni_spin_avx512(int64_t iters);

// ---- AVX-512 float-weight GEMV / GEMM (gemm_float_avx512.cpp) ----
// Y[t, r] for r in [r0, r1) with F32 / F16 / BF16 weights; every (row, token)
// dot is summed in one fixed order whatever the batch (decode = batched decode
// = prefill). 1 token: one row stream; 2..8 tokens (batched decode): column-
// chunked tiles, each weight read once; 9+: L2 panels. Measured (BF16
// [32768x4096] from DRAM, Zen 4, 2 threads, in-process A/B against the 1..3
// token GEMV / 4-row tiles they replaced, ms / GFLOPS): 1 token 10.4 / 26
// (unchanged, 25.6 GB/s); 2: 17.3 / 31 -> 11.1 / 49; 4: 17.5 / 61 -> 12.5 /
// 86; 8: 27.9 / 77 -> 19.5 / 110. L2-resident, 8 tokens reach ~154 GFLOPS of
// the ~230 fp32 FMA peak of 2 Zen 4 cores: 8 tokens cannot cost what 1 does
// there (the head at 8 tokens is ~2x its 1-token time, compute-bound).
void gemm_float_avx512(const WeightMatrix& W, const float* X, int64_t ldx, int64_t n_tokens,
                       float* Y, int64_t ldy, int64_t r0, int64_t r1);

// ---- AVX-512 + VNNI lane-layout GEMM (gemm_lane_avx512.cpp) ----
// Used for integer weight types when n_tokens >= lane_min_tokens(type): the
// lane GEMM packs each panel of rows before using it, the quad tiles stream the
// rows as they are (with their own prefetch), so for few tokens the quad tiles
// win. Crossovers measured as a model's prefill meets them: expert matrices
// ([2048x4096], [4096x2048]) cycled from DRAM, Zen 5, 2 threads, in-process
// A/B, quad / lane Gops/s: Q8_0 16 tokens 511 / 443, 20: 519 / 517, 24: 516 /
// 563; Q4_0 and MXFP4 alike (ties at 20); Q4_K 4: 331 / 224, 6: 303 / 324. So
// 20 tokens (Q4_K 6). One large matrix ([32768x4096]) put the crossover at ~16,
// L3-resident weights between 8 and 16. The quad tiles need no transposition:
// loading 16 blocks in lane order costs about as much as the multiply-adds of
// 4 tokens, which is also why multiplying lane-order rows straight from
// memory, without the packed panel, lost to both (tried: 4-24 tokens, 2 rows x
// 4 tokens).
// The super-block types Q2_K, Q3_K, IQ2_XXS, IQ4_XS take the lane GEMM from 4
// tokens (below, their GEMV): their quad tiles decode each weight block again
// for every 4 tokens, which costs more than packing it once. Same A/B (Zen 5,
// 2 threads, quiet host), quad / lane Gops/s at 4 tokens, [2048x4096] then
// [4096x2048]: Q2_K 67 / 88, 40 / 53; Q3_K 78 / 132, 50 / 66; IQ2_XXS 58 / 64,
// 51 / 66; IQ4_XS 49 / 51, 43 / 55 (two more IQ4_XS runs: ties to +27 %); at
// 8 tokens lane is 1.2-2.4x quad. (At 3 tokens lane beat the GEMV only for
// IQ2_XXS.)
// IQ3_XXS, IQ2_XS, IQ1_S and IQ1_M take it from 4 tokens like the other
// super-block types: [2048x4096] from DRAM, 2 threads, busy Zen 4 host, Gops/s
// of their quad GEMV at 3 tokens / the lane GEMM at 4: IQ3_XXS 39 / 49,
// IQ2_XS 59 / 112, IQ1_S 46 / 72, IQ1_M 40 / 35. IQ3_S and IQ2_S alike (the
// same A/B, load ~4): IQ3_S 24 / 31, IQ2_S 48 / 62 (IQ3_XXS 26 / 33 in that run).
// A type with an AVX-512 GEMV of its own runs that GEMV up to the count
// quant/matmul.cpp own_gemv_avx512 gives with it (5-10 tokens for Q2_K, IQ1_M,
// IQ2_XXS, IQ3_XXS, IQ3_S; measured there), this count where the CPU lacks it.
// Q5_K and Q6_K take it from 5 tokens: their quad GEMV at 4 tokens decodes each
// row once like the lane GEMM's packing, with cheaper float steps (1 thread,
// [512x4096] L2-resident, ns per super-block, quad / lane: 4 tokens Q5_K 17.6 /
// 20.5, Q6_K 19.6 / 28.0; 8 tokens 35.7 / 29.8, 39.8 / 32.1).
static inline bool is_lowbit(GGMLType t);  // the super-block types, below
static inline int64_t lane_min_tokens(GGMLType t) {
  if (t == GGMLType::Q4_K) return 6;
  if (t == GGMLType::Q5_K || t == GGMLType::Q6_K) return 5;
  return is_lowbit(t) ? 4 : 20;
}
bool lane_cscale_avx512(GGMLType t, float* cscale);
void gemm_lane_avx512(const WeightMatrix& W, const ActQ& act, int64_t n_tokens, float* Y,
                      int64_t ldy, int64_t r0, int64_t r1);

// ---- AVX2 lane-layout GEMM (gemm_lane_avx2.cpp) ----
// Q8_0 and the super-block types but IQ4_XS, from kLaneMinTokensAvx2 tokens
// (fewer: the plain-layout tiles of kernels_avx2.cpp / kernels_lowbit_avx2.cpp).
// Its cscale, and whether it reads ActQ::hs (the K types: their mins / offsets
// per sub-block); false for the types it does not run.
bool lane_cscale_avx2(GGMLType t, float* cscale, bool* half_sums);
// From 6 tokens for every type it runs, measured on a Zen 1 host (128-bit FP
// units; [2048x4096] cycled from DRAM, 2 threads, wall ns per super-block, two
// rounds, plain tiles / lane GEMM): IQ2_XXS 4 tokens 99 / 100, 6: 146-158 /
// 97-123, 8: 158 / 112-138; Q2_K 4: 61-71 / 77-79, 6: 77-111 / 92-93, 8: 129-132
// / 88-109; IQ3_XXS 6: 122-146 / 113-127; Q3_K 6: 101-120 / 90-107; Q6_K 6:
// 144 / 90-94; IQ1_S 6: 119-177 / 87-103; IQ1_M 4: 80-116 / 100-110, 6: 126-181
// / 83-136; Q5_K 6: 110-130 / 87-100; IQ2_XS 6: 168-170 / 163-168, 8: 195-202 /
// 182-184; IQ3_S 6: 190-240 / 110-118; Q8_0 ([4096x4096], Gops/s) 4: 20-25 /
// 23-24, 6: 19-24 / 27-29, 8: 20-27 / 31-34. At 4 tokens the plain tiles decode
// each block once per 4 tokens anyway and tie or win.
constexpr int64_t kLaneMinTokensAvx2 = 6;
void gemm_lane_avx2(const WeightMatrix& W, const ActQ& act, int64_t n_tokens, float* Y,
                    int64_t ldy, int64_t r0, int64_t r1);

// ---- 1- to 6-bit super-block types (kernels_lowbit_avx2.cpp, kernels_lowbit_avx512.cpp) ----
// Q2_K, Q3_K, IQ2_XXS, IQ4_XS, the i-quants IQ3_XXS, IQ2_XS, IQ1_S, IQ1_M,
// IQ3_S, IQ2_S and the K types of llama-quantize's ladders Q5_K, Q6_K (block
// layouts in quant/blocks.h) on the same int8 activations: plain layout on
// AVX2, quad on AVX-512 below lane_min_tokens, from there the lane GEMM
// (gemm_lane_avx512.cpp: Q3_K's sub-block scales folded into offset codes,
// Q2_K's and IQ1_M's into their codes with the offsets through hs, IQ2_XS's,
// IQ2_S's and Q6_K's applied per half block, Q5_K's as Q4_K's; see its packers).
// The types with a scale per 16-element sub-block s of a super-block ("K form")
// have weights
//     w = d * a_s * c - d2 * m_s
// (Q2_K: a = 4-bit scale, c = 2-bit code, d2 = dmin, m = 4-bit min;
//  Q3_K: a = m = 6-bit scale - 32, c = 3-bit code 0..7 (value c - 4), d2 = 4d;
//  IQ2_XS, IQ2_S: a = m = 2 * nibble + 1, c = signed grid + 43 (0..86), d = d16/8, d2 = 43d;
//  IQ1_M: a = m = 2 * 3-bit scale + 1, c = 4 (grid + 1) + (delta > 0) (0..9),
//         d = d16/4, d2 = 9/8 d16;
//  Q6_K: a = m = int8 scale, c = 6-bit code 0..63 (value c - 32), d2 = 32d;
//  Q5_K: a = 6-bit scale of the 32-element block (both its 16-element halves;
//        the AVX-512 GEMV applies d * a as a float to the block's exact dot),
//        c = 5-bit code, d2 = dmin, m = its 6-bit min), so
//     sum_i w_i x_i = d * sum_b dx_b * (sum_s a_s sum_i c_i q_i) - d2 * sum_s m_s hs_s.
// The first sum is exact in int32 (u8 x s8 pair products, at most 2 * 126 * 127,
// then one 16-bit multiply-add with a_s per pair, |a_s| <= 128); the second uses ActQ::hs. Only the
// activations are rounded, so the error bound is that of the other integer
// types (quant/matmul.h): sum_i |w_i| * max|x|_block(i) / 254 plus fp32 rounding.
// The types with one scale dw per 32-block ("offset form") have codes u with
// w = dw * (u - k), the offset k through cs:
//   IQ2_XXS: u = signed grid value + 43 (0..86), dw = d * (0.5 + s) * 0.25;
//   IQ3_XXS: u = signed grid value + 64 (2..126), dw = d * (0.5 + s) * 0.5;
//   IQ1_S:   u = 8 (grid + 1) + 2 (delta > 0) (0..18), k = 9, dw = d * (2s + 1) / 8;
//   IQ3_S:   u = signed grid value + 16 (1..31), dw = d * (2s + 1).
// IQ4_XS: per 32-block dw = d * (ls - 32) times the signed level kIq4nlValues[code];
// AVX2 multiplies |level| by q with q's sign flipped where the level is negative
// (no offset), AVX-512 uses level + 128 (1..241) with the offset k = 128 through cs.
static inline bool is_lowbit(GGMLType t) {
  switch (t) {
    case GGMLType::Q2_K:
    case GGMLType::Q3_K:
    case GGMLType::IQ2_XXS:
    case GGMLType::IQ4_XS:
    case GGMLType::IQ3_XXS:
    case GGMLType::IQ2_XS:
    case GGMLType::IQ1_S:
    case GGMLType::IQ1_M:
    case GGMLType::IQ3_S:
    case GGMLType::IQ2_S:
    case GGMLType::Q5_K:
    case GGMLType::Q6_K: return true;
    default: return false;
  }
}
// Whether the kernels of a low-bit type read ActQ::hs (the lane GEMM folds
// Q3_K's scales into its codes, takes Q5_K's mins per 32-block through cs as
// Q4_K's, and needs them for Q2_K's mins and the offsets of IQ1_M, IQ2_XS, IQ2_S
// and Q6_K only; IQ1_M's quad GEMV sums its own).
static inline bool lowbit_half_sums(GGMLType t, ActLayout layout) {
  return t == GGMLType::Q2_K || t == GGMLType::IQ2_XS || t == GGMLType::IQ2_S || t == GGMLType::Q6_K ||
         (t == GGMLType::IQ1_M && layout != ActLayout::Quad) ||
         ((t == GGMLType::Q3_K || t == GGMLType::Q5_K) && layout != ActLayout::Lane);
}
static inline ActLayout lowbit_layout(bool avx512) {
  return avx512 ? ActLayout::Quad : ActLayout::Plain;
}
// The code offset k of an offset-form type (0: none, or through hs).
static inline float lowbit_offset(GGMLType t) {
  switch (t) {
    case GGMLType::IQ2_XXS: return 43.0f;
    case GGMLType::IQ3_XXS: return 64.0f;
    case GGMLType::IQ1_S: return 9.0f;
    case GGMLType::IQ3_S: return 16.0f;
    default: return 0.0f;
  }
}
// The cscale quantize_act_avx2 gets for a low-bit type (k / lanes per block).
static inline float lowbit_cscale(GGMLType t, ActLayout layout) {
  const bool quad = layout == ActLayout::Quad;
  if (t == GGMLType::IQ4_XS) return quad ? 128.0f / 4.0f : 0.0f;  // AVX2 needs no offset
  return lowbit_offset(t) / (quad ? 4.0f : 8.0f);  // the K types use hs
}
// Fills hs [n_tokens][2 * nb_pad] from quantized activations in `layout` (AVX2 file).
void half_sums_avx2(const int8_t* qs, const float* dx, int64_t n_tokens, int64_t nb,
                    int64_t nb_pad, ActLayout layout, float* hs);
// Y[t, r] for r in [r0, r1), all tokens (act in the plain / quad layout).
void gemm_lowbit_avx2(const WeightMatrix& W, const ActQ& act, int64_t n_tokens, float* Y,
                      int64_t ldy, int64_t r0, int64_t r1);
void gemm_lowbit_avx512(const WeightMatrix& W, const ActQ& act, int64_t n_tokens, float* Y,
                        int64_t ldy, int64_t r0, int64_t r1);
// Whether t's kernels in the files built with more than the AVX-512 set (VBMI, and GFNI or
// BITALG: the GEMVs below and the lane packers that use their lookups) may run: the CPU
// has what that file needs and set_avx512_extensions is on (matmul.cpp).
bool vbmi_kernels(GGMLType t);
// IQ2_XXS GEMV, tokens in groups of 1..3, quad layout (gemv_iq2xxs_avx512.cpp): needs AVX-512
// VBMI and GFNI besides the AVX-512 set (vbmi_kernels).
void gemv_iq2xxs_avx512(const WeightMatrix& W, const ActQ& act, int64_t n_tokens, float* Y,
                        int64_t ldy, int64_t r0, int64_t r1);
// The lane GEMM's packing of two IQ2_XXS super-blocks at p (gemm_lane_avx512.cpp's packer
// contract: codes in the lane layout to out[0..512), dw to 512) by the GEMV's decode; the
// same needs.
void pack_iq2xxs_lane_avx512(const uint8_t* p, uint8_t* out);
// IQ3_XXS / IQ3_S GEMV, tokens in groups of 1..3, quad layout (gemv_iq3_avx512.cpp): needs
// AVX-512 VBMI and BITALG besides the AVX-512 set (vbmi_kernels).
void gemv_iq3_avx512(const WeightMatrix& W, const ActQ& act, int64_t n_tokens, float* Y,
                     int64_t ldy, int64_t r0, int64_t r1);
// The magnitudes of two IQ3_XXS super-blocks at p in the lane layout (out: 8 vectors, dword j
// of vector k = the grid entry of entry k of block j), looked up as the GEMV does; the
// same needs.
void iq3xxs_lane_magnitudes_avx512(const uint8_t* p, uint8_t* out);
// IQ2_XS / IQ2_S GEMV, tokens in groups of 1..3, quad layout (gemv_iq2s_avx512.cpp): needs
// AVX-512 VBMI besides the AVX-512 set (vbmi_kernels).
void gemv_iq2s_avx512(const WeightMatrix& W, const ActQ& act, int64_t n_tokens, float* Y,
                      int64_t ldy, int64_t r0, int64_t r1);
// IQ1_S / IQ1_M GEMV, tokens in groups of 1..3, quad layout (gemv_iq1_avx512.cpp).
void gemv_iq1_avx512(const WeightMatrix& W, const ActQ& act, int64_t n_tokens, float* Y,
                     int64_t ldy, int64_t r0, int64_t r1);
// Q2_K GEMV, tokens in groups of 1..3, quad layout with ActQ::hs (gemv_q2k_avx512.cpp).
void gemv_q2k_avx512(const WeightMatrix& W, const ActQ& act, int64_t n_tokens, float* Y,
                     int64_t ldy, int64_t r0, int64_t r1);

}  // namespace qk
}  // namespace pyv4
