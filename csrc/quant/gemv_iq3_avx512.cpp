// IQ3_XXS / IQ3_S GEMV (tokens in groups of 1..3) on AVX-512 with VBMI + BITALG (math in
// quant/kernels.h and below; block layouts in quant/blocks.h).
//
// Every 4 weights of these types are one grid entry (4 magnitudes; IQ3_XXS 256
// entries of 4..62, IQ3_S 512 of 1..15), so a super-block is 64 lookups. The
// generic kernels (kernels_lowbit_avx512.cpp) build them by scalar loads or
// 16-bit register lookups and spend ~25-29 ns per super-block on Zen 4. Here
// the grid is held as 4 byte tables, one per position j of an entry (T_j[i] =
// byte j of entry i), and the 64 indices of a super-block are looked up in all
// of them at once: per 128 entries of a table one vpermi2b (by the low 7 bits),
// then blends on bit 7 (and IQ3_S's 9th bit). Vector M_j then holds position j
// of entry k in byte k: dword m of it is position j of entries 4m..4m + 3,
// which all lie in 32-block m / 2, so a vpdpbusd of M_j needs no reordering,
// only activations laid out to match (xe_layout): dword m of x vector j =
// elements 16m + 4i + j, i = 0..3. The signs (IQ3_XXS: 7-bit fields and their
// parity as IQ2_XXS's; IQ3_S: stored bits), 32 bits per block in element order,
// become the byte masks of M_j by one vpshufbitqmb each: bit k of mask j = bit
// 4 (k % 8) + j of block k / 8's 32 sign bits.
//   u = k0 +- magnitude (IQ3_XXS: k0 = 64, 2..126; IQ3_S: 16, 1..31); per half
//   block m (16 weights): sum w x = dw_b dx_b (P_m - k0 Q_m), b = m / 2,
// with P_m the exact int32 dot of four chained vpdpbusd and Q_m the sum of q
// over the half block (dw_b = d (0.5 + s_b) / 2 and d (1 + 2 s_b)).
// Built with -mavx512vbmi -mavx512bitalg besides the AVX-512 flags (CMakeLists.txt).
#include <immintrin.h>

#include <cstring>

#include "quant/blocks.h"
#include "quant/iq3s_grid.h"
#include "quant/iq3xxs_grid.h"
#include "quant/kernels.h"
#include "quant/simd_avx512.h"
#include "quant/tile_drive.h"

namespace pyv4 {
namespace qk {
namespace {

using namespace qblocks;

// Position j of every grid entry: pos[j][i] = byte j of entry i.
template <int N>
struct PosTables {
  uint8_t pos[4][N];
};
template <int N, class Grid>
constexpr PosTables<N> make_pos(const Grid& grid) {
  PosTables<N> t{};
  for (int j = 0; j < 4; ++j)
    for (int i = 0; i < N; ++i) t.pos[j][i] = static_cast<uint8_t>(grid[i] >> (8 * j));
  return t;
}
alignas(64) constexpr PosTables<256> kXxsPos = make_pos<256>(kIq3xxsGrid);
alignas(64) constexpr PosTables<512> kSPos = make_pos<512>(kIq3sGrid);

// vpshufbitqmb control of sign mask j: byte i of a qword = 4 (i % 8) + j.
struct BitSel {
  uint8_t b[4][64];
};
constexpr BitSel make_bitsel() {
  BitSel t{};
  for (int j = 0; j < 4; ++j)
    for (int i = 0; i < 64; ++i) t.b[j][i] = static_cast<uint8_t>(4 * (i % 8) + j);
  return t;
}
alignas(64) constexpr BitSel kBitSel = make_bitsel();

struct Consts {
  __m512i tab[4][4];  // IQ3_XXS: [position][quarter of the grid]
  __m512i bitsel[4];
  __m512i fshift, fmask, lane16;
  Consts() {
    for (int j = 0; j < 4; ++j) {
      for (int q = 0; q < 4; ++q) tab[j][q] = _mm512_load_si512(kXxsPos.pos[j] + 64 * q);
      bitsel[j] = _mm512_load_si512(kBitSel.b[j]);
    }
    // a block's 4 sign fields (bits 0, 7, 14, 21 of its word, in the low dword
    // of its qword) to bytes 0..3; bytes 4..7 cleared by fmask
    fshift = _mm512_set1_epi64(0x00000000150E0700LL);
    fmask = _mm512_set1_epi64(0x000000007F7F7F7FLL);
    // within a 16-byte lane: bytes j, 4 + j, 8 + j, 12 + j to dword j
    lane16 = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15));
  }
};

// A super-block's codes: U[j] byte k = u of position j of entry k (u = k0 +-
// magnitude), from the 64 entries' magnitudes M[j] and the 256 sign bits S
// (qword b = block b's 32 bits in element order).
inline void signed_codes(const Consts& c, const __m512i (&M)[4], __m512i S, char k0, __m512i (&U)[4]) {
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) U[j] = iq_signed(M[j], _mm512_bitshuffle_epi64_mask(S, c.bitsel[j]), k0);
}
// dw of block m / 2 in dword m from s_b in the low dword of qword b: a + b s.
inline __m512 block_scales(__m512i s, float a, float b) {
  return _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_shuffle_epi32(s, _MM_PERM_CCAA)), _mm512_set1_ps(b),
                         _mm512_set1_ps(a));
}

// A super-block's table lookups, sign bits and scales (Dec::lookup), what
// signed_codes turns into codes: gemv_row issues them a super-block ahead.
struct Looked {
  __m512i M[4];  // magnitudes by grid position (M[j] byte k: position j of entry k)
  __m512i S;     // sign bits, qword b = block b's 32
  __m512 dw;     // block_scales
};

// IQ3_XXS: u = 64 +- magnitude (2..126), dw = d (0.5 + s) / 2; the tables in
// registers, signs by the IQ2_XXS parity rule.
struct DecIQ3_XXS {
  static constexpr size_t kBytes = sizeof(BlockIQ3_XXS);
  static constexpr char kK0 = 64;  // the code offset
  static inline Looked lookup(const Consts& c, const uint8_t* p) {
    Looked l;
    auto& M = l.M;
    const BlockIQ3_XXS& blk = *reinterpret_cast<const BlockIQ3_XXS*>(p);
    const __m512i idx = _mm512_loadu_si512(blk.qs);
    const __mmask64 top = _mm512_movepi8_mask(idx);
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j)
      M[j] = _mm512_mask_blend_epi8(top, vpermi2b_lookup(idx, c.tab[j][0], c.tab[j][1]),
                                    vpermi2b_lookup(idx, c.tab[j][2], c.tab[j][3]));
    // qword b: block b's sign word (fields, scale nibble at 28)
    const __m512i w = _mm512_cvtepu32_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qs + 64)));
    l.S = with_parity(_mm512_and_si512(_mm512_multishift_epi64_epi8(c.fshift, w), c.fmask));
    const float d = _cvtsh_ss(blk.d);
    l.dw = block_scales(_mm512_and_si512(_mm512_srli_epi64(w, 28), _mm512_set1_epi64(15)), 0.25f * d, 0.5f * d);
    return l;
  }
};

// IQ3_S: u = 16 +- magnitude (1..31), dw = d (1 + 2s); the 512-entry tables
// from memory (8 vectors per position), the 9th index bit from qh, the signs
// stored as bits.
struct DecIQ3_S {
  static constexpr size_t kBytes = sizeof(BlockIQ3_S);
  static constexpr char kK0 = 16;
  static inline Looked lookup(const Consts& c, const uint8_t* p) {
    Looked l;
    auto& M = l.M;
    const BlockIQ3_S& blk = *reinterpret_cast<const BlockIQ3_S*>(p);
    const __m512i idx = _mm512_loadu_si512(blk.qs);
    uint64_t h9;
    std::memcpy(&h9, blk.qh, 8);
    const __mmask64 b7 = _mm512_movepi8_mask(idx), b8 = _cvtu64_mask64(h9);
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      const uint8_t* t = kSPos.pos[j];
      auto quarter = [&](int q) {
        return vpermi2b_lookup(idx, _mm512_load_si512(t + 128 * q), _mm512_load_si512(t + 128 * q + 64));
      };
      M[j] = _mm512_mask_blend_epi8(b8, _mm512_mask_blend_epi8(b7, quarter(0), quarter(1)),
                                    _mm512_mask_blend_epi8(b7, quarter(2), quarter(3)));
    }
    l.S = _mm512_cvtepu32_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.signs)));
    // block b: nibble b % 2 of scales[b / 2]
    uint32_t sc4;
    std::memcpy(&sc4, blk.scales, 4);
    const __m512i sb = _mm512_cvtepu8_epi64(_mm_cvtsi32_si128(static_cast<int>(sc4)));
    const __m512i s = _mm512_and_si512(
        _mm512_srlv_epi64(_mm512_permutexvar_epi64(_mm512_setr_epi64(0, 0, 1, 1, 2, 2, 3, 3), sb),
                          _mm512_setr_epi64(0, 4, 0, 4, 0, 4, 0, 4)),
        _mm512_set1_epi64(15));
    const float d = _cvtsh_ss(blk.d);
    l.dw = block_scales(s, d, 2.0f * d);
    return l;
  }
};

// Bytes per super-block and token of the re-laid activations: 4 vectors of q
// (x vector j: dword m = elements 16m + 4i + j, i = 0..3), then per half block
// m the floats dx_b and k0 dx_b Q_m (k0 the code offset).
constexpr int64_t kXeBytes = 384;

// The activations of every token per super-block s at xe + (t * nsb + s) * 384.
// In the quad layout half block m = 2b + h is lane b % 4 of part A (h = 0) or B
// of quad group b / 4; its 16 bytes are elements 16m..16m + 15.
inline void xe_layout(const Consts& c, const ActQ& a, int64_t n_tokens, float k0, int8_t* xe) {
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
        _mm512_store_si512(o + 64 * j,
                           _mm512_mask_blend_epi32(0xFF00, _mm512_permutex2var_epi32(src[0], pick[j], src[1]),
                                                   _mm512_permutex2var_epi32(src[2], pick[j], src[3])));
      const __m512i qm = _mm512_mask_blend_epi32(0xFF00, _mm512_permutex2var_epi32(sum[0], pick[0], sum[1]),
                                                 _mm512_permutex2var_epi32(sum[2], pick[0], sum[3]));
      const __m512 dx = _mm512_permutexvar_ps(pairs, _mm512_castps256_ps512(_mm256_loadu_ps(a.d(t) + 8 * s)));
      const __m512 Q = _mm512_cvtepi32_ps(_mm512_sub_epi32(qm, _mm512_set1_epi32(16 * 128)));
      float* f = reinterpret_cast<float*>(o + 256);
      _mm512_store_ps(f, dx);
      _mm512_store_ps(f + 16, _mm512_mul_ps(_mm512_mul_ps(dx, _mm512_set1_ps(k0)), Q));
    }
  }
}

template <class Dec, int T>
void gemv_row(const Consts& c, const uint8_t* row, const ActQ& a, const int8_t* xe, float* Y, int64_t ldy,
              int64_t r) {
  const int64_t nsb = a.nb / 8;
  __m512 acc[T];
#pragma GCC unroll 3
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  // The next super-block's lookups are issued before this one's codes and dots: in
  // one iteration the chain load -> lookups -> signs -> dots left the out-of-order
  // window, not the pipes, bounding IQ3_XXS on Zen 4 (family 25 model 17, 1 thread,
  // rows in L2, ns per 256 weights: 10.5-11.2 -> 9.5 at 1 token, 14.2-14.4 -> 12.9
  // at 3); IQ3_S, whose 32 table loads and lookups per super-block bound it, the same.
  Looked next = Dec::lookup(c, row);
  for (int64_t sb = 0; sb < nsb; ++sb) {
    const uint8_t* p = row + sb * Dec::kBytes;
    prefetch_stream(p, 128);
    const Looked cur = next;
    if (sb + 1 < nsb) next = Dec::lookup(c, p + Dec::kBytes);
    __m512i U[4];
    signed_codes(c, cur.M, cur.S, Dec::kK0, U);
    const __m512 dw = cur.dw;
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

template <class Dec>
void gemv_rows(const WeightMatrix& W, const ActQ& act, int64_t n_tokens, float* Y, int64_t ldy, int64_t r0,
               int64_t r1) {
  const Consts c;
  const int64_t nsb = act.nb / 8;
  int8_t* xe = reinterpret_cast<int8_t*>(scratch_bytes(static_cast<size_t>(n_tokens * nsb * kXeBytes)));
  xe_layout(c, act, n_tokens, static_cast<float>(Dec::kK0), xe);
  gemv_rows_by_tokens(r0, r1, n_tokens, [&](auto T, int64_t r, int64_t t0) {
    gemv_row<Dec, decltype(T)::value>(c, W.row(r), act, xe + t0 * nsb * kXeBytes, Y + t0 * ldy, ldy, r);
  });
}

}  // namespace

void iq3xxs_lane_magnitudes_avx512(const uint8_t* p, uint8_t* out) {
  // byte 16L + 4q + r of index vector h: the grid index of entry 4h + q of block j = 4L + r
  // of the group (super-block j / 8, its qs byte 8 (j % 8) + 4h + q)
  struct Sel {
    uint8_t b[2][64];
  };
  static constexpr Sel kSel = [] {
    Sel t{};
    for (int h = 0; h < 2; ++h)
      for (int i = 0; i < 64; ++i) {
        const int L = i / 16, q = (i % 16) / 4, r = i % 4, j = 4 * L + r;
        t.b[h][i] = static_cast<uint8_t>((j < 8 ? 0 : 64) + 8 * (j % 8) + 4 * h + q);
      }
    return t;
  }();
  const Consts c;  // per call: a function-local static would add a guard (and a weak symbol)
  constexpr size_t kB = sizeof(BlockIQ3_XXS);
  const __m512i q0 = _mm512_loadu_si512(reinterpret_cast<const BlockIQ3_XXS*>(p)->qs);
  const __m512i q1 = _mm512_loadu_si512(reinterpret_cast<const BlockIQ3_XXS*>(p + kB)->qs);
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h) {
    const __m512i idx = _mm512_permutex2var_epi8(q0, _mm512_loadu_si512(kSel.b[h]), q1);
    const __mmask64 top = _mm512_movepi8_mask(idx);
    __m512i M[4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j)
      M[j] = _mm512_mask_blend_epi8(top, vpermi2b_lookup(idx, c.tab[j][0], c.tab[j][1]),
                                    vpermi2b_lookup(idx, c.tab[j][2], c.tab[j][3]));
    // the 4 positions of index byte i as one dword: bytes 4q..4q + 3 of each 128-bit
    // lane (lane vector 4h + q) go to vector q
    const __m512i a = _mm512_unpacklo_epi8(M[0], M[1]), b = _mm512_unpackhi_epi8(M[0], M[1]);
    const __m512i e = _mm512_unpacklo_epi8(M[2], M[3]), f = _mm512_unpackhi_epi8(M[2], M[3]);
    uint8_t* o = out + 256 * h;
    _mm512_storeu_si512(o, _mm512_unpacklo_epi16(a, e));
    _mm512_storeu_si512(o + 64, _mm512_unpackhi_epi16(a, e));
    _mm512_storeu_si512(o + 128, _mm512_unpacklo_epi16(b, f));
    _mm512_storeu_si512(o + 192, _mm512_unpackhi_epi16(b, f));
  }
}

void gemv_iq3_avx512(const WeightMatrix& W, const ActQ& act, int64_t n_tokens, float* Y, int64_t ldy, int64_t r0,
                     int64_t r1) {
  if (W.type == GGMLType::IQ3_S)
    gemv_rows<DecIQ3_S>(W, act, n_tokens, Y, ldy, r0, r1);
  else
    gemv_rows<DecIQ3_XXS>(W, act, n_tokens, Y, ldy, r0, r1);
}

}  // namespace qk
}  // namespace pyv4
