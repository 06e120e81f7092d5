// IQ3_XXS GEMV (1..3 tokens) on AVX-512 with VBMI + BITALG (math in
// quant/kernels.h and below; block layout in quant/blocks.h).
//
// Every 4 weights of IQ3_XXS are one of 256 grid entries (4 magnitudes 4..62),
// so a super-block is 64 lookups. The generic kernel (kernels_lowbit_avx512.cpp)
// builds them by scalar loads and spends ~28 ns per super-block on Zen 4. Here
// the grid is held as 4 byte tables, one per position j of an entry (T_j[i] =
// byte j of entry i, 256 bytes = 4 zmm), and the 64 indices of a super-block
// are looked up in all of them at once: per table two vpermi2b (entries 0..127
// and 128..255 by the low 7 bits) and a blend on bit 7. Vector M_j then holds
// position j of entry k in byte k: dword m of it is position j of entries 4m..
// 4m + 3, which all lie in 32-block m / 2, so a vpdpbusd of M_j needs no
// reordering, only activations laid out to match (xe_layout): dword m of x
// vector j = elements 16m + 4i + j, i = 0..3. The signs (the IQ2_XXS rule: 7-bit
// fields and their parity, 32 bits per block in element order) become the byte
// masks of M_j by one vpshufbitqmb each: bit k of mask j = bit 4 (k % 8) + j of
// block k / 8's 32 sign bits.
//   u = 64 +- magnitude (2..126); per half block m (16 weights):
//   sum w x = dw_b dx_b (P_m - 64 Q_m), dw_b = d (0.5 + s_b) / 2, b = m / 2,
// with P_m the exact int32 dot of four chained vpdpbusd and Q_m the sum of q
// over the half block.
// Built with -mavx512vbmi -mavx512bitalg besides the AVX-512 flags (CMakeLists.txt).
#include <immintrin.h>

#include "quant/blocks.h"
#include "quant/iq3xxs_grid.h"
#include "quant/kernels.h"
#include "quant/simd_avx512.h"

namespace pyv4 {
namespace qk {
namespace {

using namespace qblocks;

struct Tables {
  uint8_t pos[4][256];  // [position j][grid index]
  uint8_t bitsel[4][64];  // vpshufbitqmb control of mask j: byte i of a qword = 4 (i % 8) + j
};

constexpr Tables make_tables() {
  Tables t{};
  for (int j = 0; j < 4; ++j) {
    for (int i = 0; i < 256; ++i) t.pos[j][i] = static_cast<uint8_t>(kIq3xxsGrid[i] >> (8 * j));
    for (int i = 0; i < 64; ++i) t.bitsel[j][i] = static_cast<uint8_t>(4 * (i % 8) + j);
  }
  return t;
}
alignas(64) constexpr Tables kTables = make_tables();

struct Consts {
  __m512i tab[4][4];  // [position][quarter of the grid]
  __m512i bitsel[4];
  __m512i fshift, fmask, lane16;
  Consts() {
    for (int j = 0; j < 4; ++j) {
      for (int q = 0; q < 4; ++q) tab[j][q] = _mm512_load_si512(kTables.pos[j] + 64 * q);
      bitsel[j] = _mm512_load_si512(kTables.bitsel[j]);
    }
    // a block's 4 sign fields (bits 0, 7, 14, 21 of its word, in the low dword
    // of its qword) to bytes 0..3; bytes 4..7 cleared by fmask
    fshift = _mm512_set1_epi64(0x00000000150E0700LL);
    fmask = _mm512_set1_epi64(0x000000007F7F7F7FLL);
    // within a 16-byte lane: bytes j, 4 + j, 8 + j, 12 + j to dword j
    lane16 = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15));
  }
};

// vpermi2b with both tables in registers (as in gemv_iq2xxs_avx512.cpp: GCC
// otherwise reloads a table from memory for every lookup).
inline __m512i lookup(__m512i idx, __m512i t0, __m512i t1) {
  __asm__("vpermi2b %2, %1, %0" : "+v"(idx) : "v"(t0), "v"(t1));
  return idx;
}

// Bytes per super-block and token of the re-laid activations: 4 vectors of q
// (x vector j: dword m = elements 16m + 4i + j, i = 0..3), then per half block
// m the floats dx_b and 64 dx_b Q_m.
constexpr int64_t kXeBytes = 384;

// The activations of every token per super-block s at xe + (t * nsb + s) * 384.
// In the quad layout half block m = 2b + h is lane b % 4 of part A (h = 0) or B
// of quad group b / 4; its 16 bytes are elements 16m..16m + 15.
inline void xe_layout(const Consts& c, const ActQ& a, int64_t n_tokens, int8_t* xe) {
  const int64_t nsb = a.nb / 8;
  // dword m < 8 of permutex2var(A, idx, B) (m >= 8 from group 1): dword j of lane
  // b % 4 of A (h = 0) or B (h = 1), m = 2b + h
  __m512i pick[4];
  for (int j = 0; j < 4; ++j) {
    alignas(64) int32_t ix[16];
    for (int m = 0; m < 16; ++m) ix[m] = (m % 2 ? 16 : 0) + 4 * ((m / 2) % 4) + j;
    pick[j] = _mm512_load_si512(ix);
  }
  const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
  const __m512i pairs = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t s = 0; s < nsb; ++s) {
      const int8_t* q = a.q(t) + 256 * s;
      __m512i src[4];  // A0, B0, A1, B1 with each lane's bytes in dword order j
      __m512i sum[4];  // dword 4L: sum of (q + 128) over lane L
      for (int v = 0; v < 4; ++v) {
        const __m512i x = _mm512_loadu_si512(q + 64 * v);
        src[v] = _mm512_shuffle_epi8(x, c.lane16);
        const __m512i sad = _mm512_sad_epu8(_mm512_xor_si512(x, bias), _mm512_setzero_si512());
        sum[v] = _mm512_add_epi64(sad, _mm512_bsrli_epi128(sad, 8));
      }
      int8_t* o = xe + (t * nsb + s) * kXeBytes;
      for (int j = 0; j < 4; ++j)
        _mm512_store_si512(o + 64 * j, _mm512_mask_blend_epi32(0xFF00, _mm512_permutex2var_epi32(src[0], pick[j], src[1]),
                                                               _mm512_permutex2var_epi32(src[2], pick[j], src[3])));
      const __m512i qm = _mm512_mask_blend_epi32(0xFF00, _mm512_permutex2var_epi32(sum[0], pick[0], sum[1]),
                                                 _mm512_permutex2var_epi32(sum[2], pick[0], sum[3]));
      const __m512 dx = _mm512_permutexvar_ps(pairs, _mm512_castps256_ps512(_mm256_loadu_ps(a.d(t) + 8 * s)));
      const __m512 Q = _mm512_cvtepi32_ps(_mm512_sub_epi32(qm, _mm512_set1_epi32(16 * 128)));
      float* f = reinterpret_cast<float*>(o + 256);
      _mm512_store_ps(f, dx);
      _mm512_store_ps(f + 16, _mm512_mul_ps(_mm512_mul_ps(dx, _mm512_set1_ps(64.0f)), Q));
    }
  }
}

constexpr int kPrefetch = 2048;  // bytes ahead in the row stream (as gemv_iq2xxs)

template <int T>
void gemv_row(const Consts& c, const uint8_t* row, const ActQ& a, const int8_t* xe, float* Y, int64_t ldy,
              int64_t r) {
  const int64_t nsb = a.nb / 8;
  __m512 acc[T];
#pragma GCC unroll 3
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t sb = 0; sb < nsb; ++sb) {
    const BlockIQ3_XXS& blk = *reinterpret_cast<const BlockIQ3_XXS*>(row + sb * sizeof(BlockIQ3_XXS));
    _mm_prefetch(reinterpret_cast<const char*>(&blk) + kPrefetch, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(&blk) + kPrefetch + 64, _MM_HINT_T0);
    const __m512i idx = _mm512_loadu_si512(blk.qs);
    const __mmask64 top = _mm512_movepi8_mask(idx);
    // qword b: block b's sign word (fields, scale nibble at 28)
    const __m512i w = _mm512_cvtepu32_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qs + 64)));
    const __m512i S = with_parity(_mm512_and_si512(_mm512_multishift_epi64_epi8(c.fshift, w), c.fmask));
    __m512i U[4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      const __m512i M = _mm512_mask_blend_epi8(top, lookup(idx, c.tab[j][0], c.tab[j][1]),
                                               lookup(idx, c.tab[j][2], c.tab[j][3]));
      U[j] = iq_signed(M, _mm512_bitshuffle_epi64_mask(S, c.bitsel[j]), 64);
    }
    // dw of block m / 2 in dword m: d (0.5 + s) / 2 = d/4 + d/2 s
    const __m512i sc = _mm512_shuffle_epi32(_mm512_and_si512(_mm512_srli_epi64(w, 28), _mm512_set1_epi64(15)),
                                            _MM_PERM_CCAA);
    const float d = _cvtsh_ss(blk.d);
    const __m512 dw = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sc), _mm512_set1_ps(0.5f * d), _mm512_set1_ps(0.25f * d));
#pragma GCC unroll 3
    for (int t = 0; t < T; ++t) {
      const int8_t* x = xe + (t * nsb + sb) * kXeBytes;
      __m512i P = _mm512_dpbusd_epi32(_mm512_setzero_si512(), U[0], _mm512_load_si512(x));
#pragma GCC unroll 3
      for (int j = 1; j < 4; ++j) P = _mm512_dpbusd_epi32(P, U[j], _mm512_load_si512(x + 64 * j));
      const float* f = reinterpret_cast<const float*>(x + 256);
      acc[t] = _mm512_fmadd_ps(_mm512_fmsub_ps(_mm512_cvtepi32_ps(P), _mm512_load_ps(f), _mm512_load_ps(f + 16)),
                               dw, acc[t]);
    }
  }
#pragma GCC unroll 3
  for (int t = 0; t < T; ++t) Y[t * ldy + r] = _mm512_reduce_add_ps(acc[t]);
}

}  // namespace

void gemv_iq3xxs_avx512(const WeightMatrix& W, const ActQ& act, int64_t n_tokens, float* Y, int64_t ldy,
                        int64_t r0, int64_t r1) {
  const Consts c;
  const int64_t nsb = act.nb / 8;
  int8_t* xe = reinterpret_cast<int8_t*>(scratch_bytes(static_cast<size_t>(n_tokens * nsb * kXeBytes)));
  xe_layout(c, act, n_tokens, xe);
  for (int64_t r = r0; r < r1; ++r) {
    if (n_tokens == 1)
      gemv_row<1>(c, W.row(r), act, xe, Y, ldy, r);
    else if (n_tokens == 2)
      gemv_row<2>(c, W.row(r), act, xe, Y, ldy, r);
    else
      gemv_row<3>(c, W.row(r), act, xe, Y, ldy, r);
  }
}

}  // namespace qk
}  // namespace pyv4
