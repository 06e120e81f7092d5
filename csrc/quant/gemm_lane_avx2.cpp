// AVX2 prefill GEMM for Q8_0 and the super-block types (Q2_K, Q3_K, Q5_K, Q6_K,
// IQ2_XXS, IQ3_XXS, IQ2_XS, IQ1_S, IQ1_M, IQ3_S, IQ2_S; not IQ4_XS, whose signed
// levels do not fit vpmaddubsw's unsigned operand) in the lane layout of
// quant/kernels.h, the AVX2 form of gemm_lane_avx512.cpp.
//
// Without VNNI, the plain-layout tiles (kernels_avx2.cpp, kernels_lowbit_avx2.cpp)
// pay a float step (convert, scale, accumulate) per 32-block and (row, token),
// as much as the integer dot itself. Here 8 blocks go one per dword lane:
// ymm k (k = 0..7) holds elements 4k..4k+3 of blocks 0..7, so
//   P += vpmaddwd(vpmaddubsw(W_k, X_k), A)   8 int32 lanes, one per block
// sums each block's exact 32-element dot in its lane, and the float step runs
// once per 8 blocks:
//   offset form (IQ2_XXS, IQ3_XXS, IQ1_S, IQ3_S; Q8_0 with cs = 0; A = 1):
//     F += dw * (dx * float(P) - cs)              cs = k * dx * sum(q)
//   K form (the rest; A = the sub-block scale a_s of the lane's block, its first
//   half for k < 4, its second for k >= 4):
//     F += d * dx * float(P) + mneg . hs          mins / offsets per sub-block
// The types with codes of at most 32 (kSum 4: Q2_K, Q3_K, Q5_K, IQ1_S, IQ1_M,
// IQ3_S) or 64 (kSum 2: Q6_K) add kSum vpmaddubsw results as int16 before the
// one vpmaddwd (4 * 2 * 31 * 127 and 2 * 2 * 63 * 127 fit; int16_sums from each
// decoder's kMaxCode). On a Zen 1 host, whose 128-bit units split each ymm
// multiply in two, Q2_K at 64 tokens went 1399 -> 832 ns per super-block with
// these sums and the rolled k loop of micro() together (the loop alone took
// IQ2_XXS, which sums nothing, 1505 -> 1072).
// The activations are ActQ's lane layout as the AVX-512 GEMM has it (16-block
// groups of 512 bytes): a group's ymm k is the 32 bytes at 64k + 32h of its
// 16-block group (h its half). vpmaddubsw cannot saturate: codes <= 126
// (IQ3_XXS's), |q| <= 127; Q8_0 as in the plain tiles, |w| <= 128.
//
// Each weight row is decoded once per call (the decoders of
// lowbit_decode_avx2.h, then an 8x8 dword transpose) into a thread-local panel,
// which every token tile reads; the loops and the cache policy are
// quant/lane_drive.h's.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "quant/blocks.h"
#include "quant/kernels.h"
#include "quant/lane_drive.h"
#include "quant/lowbit_decode_avx2.h"
#include "quant/simd_avx2.h"

namespace pyv4 {
namespace qk {
namespace {

using namespace qblocks;

// Packed bytes per row and super-block: codes 256, then
//   offset form: dw of the 8 blocks (32);
//   K form: A (64: the first halves' scales, then the second halves', each
//   a_s in both words of its block's dword), mneg of the 16 sub-blocks (64),
//   d (4, padded to 32).
constexpr int kOffsetBytes = 288, kKBytes = 416;
// Register tile: 1 row x 4 tokens (4 int32 sums, 4 activation vectors, the
// weights and A). 2 x 4 spilled its sums (16 ymm registers): L2-resident,
// 1 thread, ns per super-block at 16 / 64 tokens, 2 x 4 -> 1 x 4: IQ2_XXS
// 557 -> 389 / 1908 -> 1307, Q2_K 574 -> 438 / 1966 -> 1368.
constexpr int kR = 1;
constexpr int kT = 4;
constexpr LaneShape kShape{16, 256, 384 << 10, 16, kR, kT};

// v[j] = the 32 codes of block j in element order -> v[k] dword j = dword k of block j.
inline void transpose8x8(__m256i (&v)[8]) {
  __m256i t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
  }
  for (int h = 0; h < 2; ++h) {  // blocks 4h..4h+3
    u[4 * h + 0] = _mm256_unpacklo_epi64(t[4 * h], t[4 * h + 2]);      // dwords 0 | 4
    u[4 * h + 1] = _mm256_unpackhi_epi64(t[4 * h], t[4 * h + 2]);      // 1 | 5
    u[4 * h + 2] = _mm256_unpacklo_epi64(t[4 * h + 1], t[4 * h + 3]);  // 2 | 6
    u[4 * h + 3] = _mm256_unpackhi_epi64(t[4 * h + 1], t[4 * h + 3]);  // 3 | 7
  }
  for (int k = 0; k < 4; ++k) {
    v[k] = _mm256_permute2x128_si256(u[k], u[4 + k], 0x20);
    v[4 + k] = _mm256_permute2x128_si256(u[k], u[4 + k], 0x31);
  }
}

// codes(b): the 32 codes of block b of a super-block.
template <class Codes>
inline void pack_codes(Codes&& codes, uint8_t* out) {
  __m256i v[8];
#pragma GCC unroll 8
  for (int b = 0; b < 8; ++b) v[b] = codes(b);
  transpose8x8(v);
  for (int k = 0; k < 8; ++k) _mm256_store_si256(reinterpret_cast<__m256i*>(out + 32 * k), v[k]);
}

// How many vpmaddubsw results, each pair at most 2 * 127 * max_code, add as
// int16 before one vpmaddwd: at most 4 (the K form's scale changes at k = 4,
// and longer sums were not measured).
constexpr int int16_sums(int max_code) {
  int n = 4;
  while (n > 1 && n * 2 * 127 * max_code > 32767) n /= 2;
  return n;
}

// Offset form: Off of lowbit_decode_avx2.h (begin, codes).
template <class Off>
struct PackOffset {
  static constexpr bool kK = false, kSigned = false;
  static constexpr int kSum = int16_sums(Off::kMaxCode);
  static constexpr int kGroupBytes = kOffsetBytes;
  static constexpr size_t kSuperBytes = Off::kBytes;
  static inline void group(const uint8_t* sb, uint8_t* out, int64_t /*blocks: 8*/) {
    Off dec;
    dec.begin(sb, reinterpret_cast<float*>(out + 256));
    pack_codes([&](int b) { return dec.codes(b); }, out);
  }
};

// K form: Dec of lowbit_decode_avx2.h (scales, codes).
template <class Dec>
struct PackK {
  static constexpr bool kK = true, kSigned = false;
  static constexpr int kSum = int16_sums(Dec::kMaxCode);
  static constexpr int kGroupBytes = kKBytes;
  static constexpr size_t kSuperBytes = Dec::kBytes;
  static inline void group(const uint8_t* sb, uint8_t* out, int64_t /*blocks: 8*/) {
    pack_codes([&](int b) { return Dec::codes(sb, b); }, out);
    KScales ks;
    Dec::scales(sb, &ks);
    // words a_0..a_15 (a_2j, a_2j+1: block j's halves) -> a_2j in both words of dword j, then a_2j+1
    const __m256i a = scale_words(ks);
    const __m256i first = _mm256_setr_epi8(0, 1, 0, 1, 4, 5, 4, 5, 8, 9, 8, 9, 12, 13, 12, 13,  //
                                           0, 1, 0, 1, 4, 5, 4, 5, 8, 9, 8, 9, 12, 13, 12, 13);
    const __m256i second = _mm256_add_epi8(first, _mm256_set1_epi8(2));
    _mm256_store_si256(reinterpret_cast<__m256i*>(out + 256), _mm256_shuffle_epi8(a, first));
    _mm256_store_si256(reinterpret_cast<__m256i*>(out + 288), _mm256_shuffle_epi8(a, second));
    std::memcpy(out + 320, ks.mneg, 64);
    _mm256_store_ps(reinterpret_cast<float*>(out + 384), _mm256_set1_ps(ks.d));
  }
};

// Q8_0 in the offset form's panel with cs = 0: its codes are signed, so, as in
// the plain tiles, vpmaddubsw takes |w| and the activations carry w's sign
// (|w| <= 128: a pair is at most 2 * 128 * 127). A group is 8 blocks of 34
// bytes; Q8_0 rows are any multiple of 32 columns, so a row's last group is
// zero-padded (codes and dw 0, against zero-padded activations).
struct PackQ8_0 {
  static constexpr bool kK = false, kSigned = true;
  static constexpr int kSum = int16_sums(128);  // |w| <= 128: 1
  static constexpr int kGroupBytes = kOffsetBytes;
  static constexpr size_t kSuperBytes = 8 * sizeof(BlockQ8_0);
  static inline void group(const uint8_t* p, uint8_t* out, int64_t blocks) {
    __m256i v[8];
    alignas(32) float dw[8];
    for (int b = 0; b < 8; ++b) {
      const uint8_t* blk = p + b * sizeof(BlockQ8_0);
      v[b] = b < blocks ? load256(blk + 2) : _mm256_setzero_si256();
      dw[b] = b < blocks ? _cvtsh_ss(load_u16(blk)) : 0.0f;
    }
    transpose8x8(v);
    for (int k = 0; k < 8; ++k) _mm256_store_si256(reinterpret_cast<__m256i*>(out + 32 * k), v[k]);
    std::memcpy(out + 256, dw, 32);
  }
};

// R rows x T tokens over super-blocks [g0, g1): the R*T int32 sums in registers,
// the float ones in L1 (updated once per super-block).
template <class Pk, int R, int T>
void micro(const uint8_t* pw, size_t ps, const ActQ& a, int64_t t0, int64_t g0, int64_t g1, float* Y,
           int64_t ldy, int64_t r) {
  alignas(32) float F[R][T][8];
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) _mm256_store_ps(F[i][t], _mm256_setzero_ps());
  const int8_t* xq = a.q(t0);
  const float* xd = a.d(t0);
  const float* xc = a.c(t0);
  const float* xh = Pk::kK ? a.h(t0) : nullptr;
  const int64_t sq = a.nb_pad * 32, sf = a.nb_pad, sh = 2 * a.nb_pad;
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* wg = pw + g * Pk::kGroupBytes;
    const int8_t* x[T];
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) x[t] = xq + t * sq + 512 * (g / 2) + 32 * (g % 2);
    __m256i P[R][T];
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) P[i][t] = _mm256_setzero_si256();
    // A rolled k loop with the activation pointers in registers: fully unrolled,
    // GCC kept all 32 products live and spilled them with their addresses
    // (IQ2_XXS, L2-resident, 1 thread, 64 tokens: 1505 -> 1072 ns per super-block).
#pragma GCC unroll 1
    for (int k0 = 0; k0 < 8; k0 += Pk::kSum) {
      __m256i S[R][T];
#pragma GCC unroll 4
      for (int j = 0; j < Pk::kSum; ++j) {
        const int k = k0 + j;
        __m256i X[T];
#pragma GCC unroll 4
        for (int t = 0; t < T; ++t) X[t] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[t] + 64 * k));
#pragma GCC unroll 4
        for (int i = 0; i < R; ++i) {
          const __m256i Wk = _mm256_load_si256(reinterpret_cast<const __m256i*>(wg + i * ps + 32 * k));
          const __m256i Wu = Pk::kSigned ? _mm256_sign_epi8(Wk, Wk) : Wk;
#pragma GCC unroll 4
          for (int t = 0; t < T; ++t) {
            const __m256i p = _mm256_maddubs_epi16(Wu, Pk::kSigned ? _mm256_sign_epi8(X[t], Wk) : X[t]);
            S[i][t] = j == 0 ? p : _mm256_add_epi16(S[i][t], p);
          }
        }
      }
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) {
        __m256i A = ones;
        if constexpr (Pk::kK) A = _mm256_load_si256(reinterpret_cast<const __m256i*>(wg + i * ps + 256 + 32 * (k0 / 4)));
#pragma GCC unroll 4
        for (int t = 0; t < T; ++t) P[i][t] = _mm256_add_epi32(P[i][t], _mm256_madd_epi16(S[i][t], A));
      }
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      const __m256 DX = _mm256_loadu_ps(xd + t * sf + 8 * g);
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) {
        const float* fw = reinterpret_cast<const float*>(wg + i * ps + 256);
        const __m256 f = _mm256_cvtepi32_ps(P[i][t]);
        __m256 acc = _mm256_load_ps(F[i][t]);
        if constexpr (Pk::kK) {
          acc = _mm256_fmadd_ps(_mm256_mul_ps(f, DX), _mm256_load_ps(fw + 32), acc);
          acc = _mm256_fmadd_ps(_mm256_load_ps(fw + 16), _mm256_loadu_ps(xh + t * sh + 16 * g), acc);
          acc = _mm256_fmadd_ps(_mm256_load_ps(fw + 24), _mm256_loadu_ps(xh + t * sh + 16 * g + 8), acc);
        } else {
          const __m256 KC = _mm256_loadu_ps(xc + t * sf + 8 * g);
          acc = _mm256_fmadd_ps(_mm256_fmsub_ps(f, DX, KC), _mm256_load_ps(fw), acc);
        }
        _mm256_store_ps(F[i][t], acc);
      }
    }
  }
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < R; ++i) {
      const float s = hsum(_mm256_load_ps(F[i][t]));
      float& y = Y[(t0 + t) * ldy + r + i];
      y = g0 > 0 ? y + s : s;
    }
}

template <class Pk, int R>
void micro_t(int tt, const uint8_t* pw, size_t ps, const ActQ& a, int64_t t0, int64_t g0, int64_t g1, float* Y,
             int64_t ldy, int64_t r) {
  switch (tt) {
    case 4: return micro<Pk, R, 4>(pw, ps, a, t0, g0, g1, Y, ldy, r);
    case 3: return micro<Pk, R, 3>(pw, ps, a, t0, g0, g1, Y, ldy, r);
    case 2: return micro<Pk, R, 2>(pw, ps, a, t0, g0, g1, Y, ldy, r);
    default: return micro<Pk, R, 1>(pw, ps, a, t0, g0, g1, Y, ldy, r);
  }
}

template <class Pk>
void gemm_lane(const WeightMatrix& W, const ActQ& a, int64_t n_tokens, float* Y, int64_t ldy, int64_t r0,
               int64_t r1) {
  static_assert(kR == 1 && kT == 4, "tile");
  const int64_t ng = (a.nb + 7) / 8;  // groups of 8 blocks per row (the activations past nb are zero)
  const size_t ps = static_cast<size_t>(ng) * Pk::kGroupBytes;
  lane_drive(
      kShape, W, n_tokens, r0, r1, ng, ps, static_cast<size_t>(a.nb_pad) * 32,
      [&](int64_t r, uint8_t* out) {
        const uint8_t* row = W.row(r);
        for (int64_t g = 0; g < ng; ++g)
          Pk::group(row + g * Pk::kSuperBytes, out + g * Pk::kGroupBytes, std::min<int64_t>(8, a.nb - 8 * g));
      },
      [&](int, int tt, const uint8_t* pw, int64_t t, int64_t g0, int64_t g1, int64_t r) {
        micro_t<Pk, kR>(tt, pw, ps, a, t, g0, g1, Y, ldy, r);
      });
}

static_assert(PackK<DecQ2_K>::kSum == 4 && PackK<DecQ5_K>::kSum == 4 && PackK<DecQ6_K>::kSum == 2 &&
                  PackOffset<OffIQ1_S>::kSum == 4 && PackOffset<OffIQ3_S>::kSum == 4 &&
                  PackOffset<OffIQ2_XXS>::kSum == 1 && PackQ8_0::kSum == 1,
              "int16 sums per type");

}  // namespace

bool lane_cscale_avx2(GGMLType t, float* cscale, bool* half_sums) {
  switch (t) {
    case GGMLType::Q8_0:
      *cscale = 0.0f;
      *half_sums = false;
      return true;
    case GGMLType::IQ2_XXS:
    case GGMLType::IQ3_XXS:
    case GGMLType::IQ1_S:
    case GGMLType::IQ3_S:
      *cscale = lowbit_offset(t);
      *half_sums = false;
      return true;
    case GGMLType::Q2_K:
    case GGMLType::Q3_K:
    case GGMLType::Q5_K:
    case GGMLType::Q6_K:
    case GGMLType::IQ2_XS:
    case GGMLType::IQ1_M:
    case GGMLType::IQ2_S:
      *cscale = 0.0f;
      *half_sums = true;
      return true;
    default: return false;
  }
}

void gemm_lane_avx2(const WeightMatrix& W, const ActQ& act, int64_t n_tokens, float* Y, int64_t ldy,
                    int64_t r0, int64_t r1) {
  switch (W.type) {
    case GGMLType::Q8_0: return gemm_lane<PackQ8_0>(W, act, n_tokens, Y, ldy, r0, r1);
    case GGMLType::IQ2_XXS: return gemm_lane<PackOffset<OffIQ2_XXS>>(W, act, n_tokens, Y, ldy, r0, r1);
    case GGMLType::IQ3_XXS: return gemm_lane<PackOffset<OffIQ3_XXS>>(W, act, n_tokens, Y, ldy, r0, r1);
    case GGMLType::IQ1_S: return gemm_lane<PackOffset<OffIQ1_S>>(W, act, n_tokens, Y, ldy, r0, r1);
    case GGMLType::IQ3_S: return gemm_lane<PackOffset<OffIQ3_S>>(W, act, n_tokens, Y, ldy, r0, r1);
    case GGMLType::Q2_K: return gemm_lane<PackK<DecQ2_K>>(W, act, n_tokens, Y, ldy, r0, r1);
    case GGMLType::Q3_K: return gemm_lane<PackK<DecQ3_K>>(W, act, n_tokens, Y, ldy, r0, r1);
    case GGMLType::Q5_K: return gemm_lane<PackK<DecQ5_K>>(W, act, n_tokens, Y, ldy, r0, r1);
    case GGMLType::Q6_K: return gemm_lane<PackK<DecQ6_K>>(W, act, n_tokens, Y, ldy, r0, r1);
    case GGMLType::IQ2_XS: return gemm_lane<PackK<DecIQ2_XS>>(W, act, n_tokens, Y, ldy, r0, r1);
    case GGMLType::IQ1_M: return gemm_lane<PackK<DecIQ1_M>>(W, act, n_tokens, Y, ldy, r0, r1);
    case GGMLType::IQ2_S: return gemm_lane<PackK<DecIQ2_S>>(W, act, n_tokens, Y, ldy, r0, r1);
    default: return;
  }
}

}  // namespace qk
}  // namespace pyv4
