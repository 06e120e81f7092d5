// IQ2_XS / IQ2_S GEMV (tokens in groups of 1..3) on AVX-512 with VBMI (math in
// quant/kernels.h and below; block layouts in quant/blocks.h).
//
// Every 8 weights of these types are one grid entry of 8 magnitudes 8 / 25 / 43
// (IQ2_XS: 512 entries, signs a 7-bit field and its parity; IQ2_S: 1024
// entries, signs stored as a byte), and every 16 weights (two entries) have
// their own scale. The generic kernels (kernels_lowbit_avx512.cpp) gather the
// entries and spend ~24 ns per super-block on Zen 4. Here two super-blocks (64
// entries) are decoded at once: the grid is re-coded so that a byte holds two
// positions' levels as two nibbles (a code 0..8 per position pair), two byte
// tables looked up for all 64 entries by one vpermi2b per 128 entries and a
// blend tree on the higher index bits; per position pair q one vpermb per
// position turns the codes into magnitudes, and a byte unpack puts positions
// 2q, 2q + 1 of entry k into one word. A dword then holds them for entries 2w,
// 2w + 1, which are one sub-block w, so four chained vpdpbusd (q = 0..3) leave
// sub-block w's exact dot in one dword: of P_lo for w = 8L + i, of P_hi for w =
// 8L + 4 + i (dword 4L + i, L the 128-bit lane). The sign bytes, doubled by the
// same unpack, give each vector's byte mask by one vptestmb. The activations are
// re-laid once per call to that order (xe_layout), with dx and the offset
// 43 dx Q_w per sub-block:
//   sum_{i in w} w_i x_i = W_w dx (P_w - 43 Q_w), W_w = d (2 nibble_w + 1) / 8.
// (Eight per-position byte tables, as in gemv_iq3_avx512.cpp, took IQ2_XS 19.7
// ns per super-block: 32 vpermi2b per pair against 8 here.)
// Built with -mavx512vbmi besides the AVX-512 flags (CMakeLists.txt).
#include <immintrin.h>

#include <cstring>

#include "quant/blocks.h"
#include "quant/iq2s_grid.h"
#include "quant/iq2xs_grid.h"
#include "quant/kernels.h"
#include "quant/simd_avx512.h"
#include "quant/tile_drive.h"

namespace pyv4 {
namespace qk {
namespace {

using namespace qblocks;

// The grid re-coded by position pairs: the magnitudes (8, 25, 43: levels 0, 1,
// 2) of positions 2q, 2q + 1 of entry i as one code c_2q + 3 c_2q+1 (0..8), in
// nibble q % 2 of pairs[q / 2][i].
// The grid re-coded by position pairs: the magnitudes (8, 25, 43: levels 0, 1,
// 2) of positions 2q, 2q + 1 of entry i as one code c_2q + 3 c_2q+1 (0..8), in
// nibble q % 2 of pairs[q / 2][i].
template <int N>
struct PairTables {
  uint8_t pairs[2][N];
};
constexpr int level(uint64_t m) { return m == 8 ? 0 : m == 25 ? 1 : 2; }
template <int N>
constexpr PairTables<N> make_pairs(const uint64_t (&grid)[N]) {
  PairTables<N> t{};
  for (int i = 0; i < N; ++i)
    for (int q = 0; q < 4; ++q) {
      const int code = level((grid[i] >> (16 * q)) & 255) + 3 * level((grid[i] >> (16 * q + 8)) & 255);
      t.pairs[q / 2][i] = static_cast<uint8_t>(t.pairs[q / 2][i] | code << (4 * (q % 2)));
    }
  return t;
}
alignas(64) constexpr PairTables<512> kXsPairs = make_pairs(kIq2xsGrid);
alignas(64) constexpr PairTables<1024> kSPairs = make_pairs(kIq2sGrid);

// code -> the magnitude of the first / second position of the pair
struct PairLut {
  uint8_t lut[2][64];
};
constexpr PairLut make_lut() {
  PairLut t{};
  const uint8_t mag[3] = {8, 25, 43};
  for (int c = 0; c < 9; ++c) t.lut[0][c] = mag[c % 3], t.lut[1][c] = mag[c / 3];
  return t;
}
alignas(64) constexpr PairLut kLut = make_lut();

// Sub-block w of the pair behind dword d of the lo / hi vectors.
constexpr int sub_lo(int d) { return 8 * (d / 4) + d % 4; }
constexpr int sub_hi(int d) { return 8 * (d / 4) + 4 + d % 4; }

struct Consts {
  __m512i even, odd;   // IQ2_XS: bytes 2k / 2k + 1 of the pair's 128 qs bytes
  __m512i qh_byte, qh_bits;  // IQ2_S: entry k's qh byte (k / 4 of the pair's 16) and bit 2 (k % 4)
  __m512i sc_lo, sc_hi;  // scale byte of dword d's sub-block (dword index into 16 bytes)
  __m512i nib_shift;   // 4 * (sub-block % 2)
  Consts() {
    alignas(64) uint8_t e[64], o[64], hb[64], hm[64];
    for (int k = 0; k < 64; ++k) {
      e[k] = static_cast<uint8_t>(2 * k), o[k] = static_cast<uint8_t>(2 * k + 1);
      hb[k] = static_cast<uint8_t>(k / 4), hm[k] = static_cast<uint8_t>(1 << (2 * (k % 4)));
    }
    even = _mm512_load_si512(e), odd = _mm512_load_si512(o);
    qh_byte = _mm512_load_si512(hb), qh_bits = _mm512_load_si512(hm);
    alignas(64) int32_t lo[16], hi[16], sh[16];
    for (int d = 0; d < 16; ++d) lo[d] = sub_lo(d) / 2, hi[d] = sub_hi(d) / 2, sh[d] = 4 * (d % 2);
    sc_lo = _mm512_load_si512(lo), sc_hi = _mm512_load_si512(hi), nib_shift = _mm512_load_si512(sh);
  }
};

// A pair table of N entries at 64 indices: bits 0..6 in idx, the higher bits
// (7, 8, 9) in hb: one vpermi2b per 128 entries, then a blend tree.
template <int N>
inline __m512i lookup_pairs(const uint8_t* t, __m512i idx, const __mmask64* hb) {
  __m512i q[N / 128];
#pragma GCC unroll 8
  for (int i = 0; i < N / 128; ++i)
    q[i] = vpermi2b_lookup(idx, _mm512_load_si512(t + 128 * i), _mm512_load_si512(t + 128 * i + 64));
#pragma GCC unroll 3
  for (int n = N / 128, l = 0; n > 1; n /= 2, ++l)
#pragma GCC unroll 4
    for (int i = 0; i < n / 2; ++i) q[i] = _mm512_mask_blend_epi8(hb[l], q[2 * i], q[2 * i + 1]);
  return q[0];
}

// The 64 entries of two super-blocks: IQ2_XS's qs words are a 9-bit index and
// a 7-bit sign field (the 8th sign its parity).
struct DecIQ2_XS {
  using Block = BlockIQ2_XS;
  static inline void entries(const Consts& c, const Block& b0, const Block* b1, __m512i* B, __m512i* S) {
    const __m512i q0 = _mm512_loadu_si512(b0.qs);
    const __m512i q1 = b1 ? _mm512_loadu_si512(b1->qs) : _mm512_setzero_si512();
    const __m512i idx = _mm512_permutex2var_epi8(q0, c.even, q1);  // index bits 0..7 of entry k
    const __m512i hib = _mm512_permutex2var_epi8(q0, c.odd, q1);   // bit 8, then the sign field
    const __mmask64 hb[2] = {_mm512_movepi8_mask(idx), _mm512_test_epi8_mask(hib, _mm512_set1_epi8(1))};
    *S = with_parity(_mm512_and_si512(_mm512_srli_epi16(hib, 1), _mm512_set1_epi8(0x7F)));
    B[0] = lookup_pairs<512>(kXsPairs.pairs[0], idx, hb);
    B[1] = lookup_pairs<512>(kXsPairs.pairs[1], idx, hb);
  }
};
// IQ2_S: 10-bit indices (low bytes in qs[0..31], the high 2 bits of entry 4b + l
// at bits 2l of qh[b]), the signs stored as bytes in qs[32..63].
struct DecIQ2_S {
  using Block = BlockIQ2_S;
  static inline void entries(const Consts& c, const Block& b0, const Block* b1, __m512i* B, __m512i* S) {
    auto half = [&](int at) {
      const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0.qs + at));
      const __m256i hi =
          b1 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b1->qs + at)) : _mm256_setzero_si256();
      return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    };
    const __m512i idx = half(0);
    *S = half(32);
    uint64_t h0, h1 = 0;
    std::memcpy(&h0, b0.qh, 8);
    if (b1) std::memcpy(&h1, b1->qh, 8);
    const __m512i qh = _mm512_permutexvar_epi8(
        c.qh_byte, _mm512_castsi128_si512(_mm_set_epi64x(static_cast<long long>(h1), static_cast<long long>(h0))));
    const __mmask64 hb[3] = {_mm512_movepi8_mask(idx), _mm512_test_epi8_mask(qh, c.qh_bits),
                             _mm512_test_epi8_mask(qh, _mm512_add_epi8(c.qh_bits, c.qh_bits))};
    B[0] = lookup_pairs<1024>(kSPairs.pairs[0], idx, hb);
    B[1] = lookup_pairs<1024>(kSPairs.pairs[1], idx, hb);
  }
};

// The grid lookups of super-blocks p and p + kBytes (zeros if !two): the pair codes
// of positions 0..3 / 4..7 and the sign bytes of entry k (Dec::entries). gemv_row
// issues them a pair ahead of decode2.
struct PairEntries {
  __m512i B[2], S;
};

template <class Dec>
inline PairEntries pair_entries(const Consts& c, const uint8_t* p, bool two) {
  using Block = typename Dec::Block;
  const Block* b1 = two ? reinterpret_cast<const Block*>(p + sizeof(Block)) : nullptr;
  PairEntries e;
  Dec::entries(c, *reinterpret_cast<const Block*>(p), b1, e.B, &e.S);
  return e;
}

// Super-blocks p and p + kBytes (zeros if !two) decoded from their entries e: the
// interleaved codes V[0..3] (lo) and V[4..7] (hi) and the sub-block scales W of
// the lo / hi dwords.
template <class Dec>
inline void decode2(const Consts& c, const uint8_t* p, bool two, const PairEntries& e, __m512i (&V)[8],
                    __m512* wlo, __m512* whi) {
  using Block = typename Dec::Block;
  const Block& b0 = *reinterpret_cast<const Block*>(p);
  const Block* b1 = two ? reinterpret_cast<const Block*>(p + sizeof(Block)) : nullptr;
  const __m512i (&B)[2] = e.B;
  const __m512i S = e.S;
  // entry k's sign byte in both bytes of word k % 8 of lane k / 16 (lo: k % 16 < 8)
  const __m512i s_lo = _mm512_unpacklo_epi8(S, S), s_hi = _mm512_unpackhi_epi8(S, S);
  const __m512i lut0 = _mm512_load_si512(kLut.lut[0]), lut1 = _mm512_load_si512(kLut.lut[1]);
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    const __m512i code = _mm512_and_si512(q % 2 ? _mm512_srli_epi16(B[q / 2], 4) : B[q / 2], _mm512_set1_epi8(15));
    const __m512i m0 = _mm512_permutexvar_epi8(code, lut0), m1 = _mm512_permutexvar_epi8(code, lut1);
    // bytes 2q, 2q + 1 of the sign byte for the two magnitudes of each word
    const __m512i bits = _mm512_set1_epi16(static_cast<short>((1 << (2 * q)) | (1 << (2 * q + 1)) << 8));
    V[q] = iq_signed(_mm512_unpacklo_epi8(m0, m1), _mm512_test_epi8_mask(s_lo, bits), 43);
    V[4 + q] = iq_signed(_mm512_unpackhi_epi8(m0, m1), _mm512_test_epi8_mask(s_hi, bits), 43);
  }
  // scale bytes 0..7 of super-block 0, 8..15 of 1: dword d's sub-block nibble
  uint64_t s0, s1 = 0;
  std::memcpy(&s0, b0.scales, 8);
  if (b1) std::memcpy(&s1, b1->scales, 8);
  const __m512i sb = _mm512_cvtepu8_epi32(_mm_set_epi64x(static_cast<long long>(s1), static_cast<long long>(s0)));
  const __m512i m15 = _mm512_set1_epi32(15);
  const __m512i nlo = _mm512_and_si512(_mm512_srlv_epi32(_mm512_permutexvar_epi32(c.sc_lo, sb), c.nib_shift), m15);
  const __m512i nhi = _mm512_and_si512(_mm512_srlv_epi32(_mm512_permutexvar_epi32(c.sc_hi, sb), c.nib_shift), m15);
  // d / 8 of super-block 0 in dwords 0..7 (sub-blocks < 16), of 1 in 8..15
  const float d0 = _cvtsh_ss(b0.d) * 0.125f, d1 = b1 ? _cvtsh_ss(b1->d) * 0.125f : 0.0f;
  const __m512 dd = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(d0), _mm512_set1_ps(d1));
  *wlo = _mm512_fmadd_ps(_mm512_cvtepi32_ps(nlo), _mm512_add_ps(dd, dd), dd);
  *whi = _mm512_fmadd_ps(_mm512_cvtepi32_ps(nhi), _mm512_add_ps(dd, dd), dd);
}

// Bytes per super-block pair and token of the re-laid activations: 8 vectors
// of q (vector q / 4 + q: dword d = positions 2q, 2q + 1 of the two entries of
// sub-block sub_lo(d) / sub_hi(d)), then per lo / hi dword the floats dx and
// 43 dx Q_w.
constexpr int64_t kXeBytes = 768;

// The activations of every token per super-block pair s at xe + (t * npair + s) * 768.
// In the quad layout sub-block w (of the pair) is lane (w' / 2) % 4 of part A
// (w' even) or B of quad group w' / 8 of super-block w / 16, w' = w % 16.
inline void xe_layout(const ActQ& a, int64_t n_tokens, int8_t* xe) {
  const int64_t nsb = a.nb / 8, npair = (nsb + 1) / 2;
  // Within a lane (one sub-block, entries e, e' of 8 elements): dword q = e[2q],
  // e[2q + 1], e'[2q], e'[2q + 1].
  const __m512i pairs16 = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15));
  // dword d of an output comes from lane pair (A, B) of quad group L of the pair
  // (L = d / 4: super-block L / 2, group L % 2): dword q of lane (w' / 2) % 4 of A
  // (w' even) or B, w' = sub-block % 16.
  __m512i pick[2][4];
  for (int h = 0; h < 2; ++h)
    for (int q = 0; q < 4; ++q) {
      alignas(64) int32_t ix[16];
      for (int d = 0; d < 16; ++d) {
        const int w = (h ? sub_hi(d) : sub_lo(d)) % 16;
        ix[d] = (w % 2 ? 16 : 0) + 4 * ((w / 2) % 4) + q;
      }
      pick[h][q] = _mm512_load_si512(ix);
    }
  __m512i block[2];  // the block (sub-block / 2) of the lo / hi dwords
  for (int h = 0; h < 2; ++h) {
    alignas(64) int32_t bi[16];
    for (int d = 0; d < 16; ++d) bi[d] = (h ? sub_hi(d) : sub_lo(d)) / 2;
    block[h] = _mm512_load_si512(bi);
  }
  const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t s = 0; s < npair; ++s) {
      __m512i src[8], sum[8];  // quad groups A0, B0, A1, B1 of both super-blocks
      for (int v = 0; v < 8; ++v) {
        const int64_t sb = 2 * s + v / 4;
        if (sb < nsb) {
          const __m512i x = _mm512_loadu_si512(a.q(t) + 256 * sb + 64 * (v % 4));
          src[v] = _mm512_shuffle_epi8(x, pairs16);
          const __m512i sad = _mm512_sad_epu8(_mm512_xor_si512(x, bias), _mm512_setzero_si512());
          sum[v] = _mm512_sub_epi64(_mm512_add_epi64(sad, _mm512_bsrli_epi128(sad, 8)), _mm512_set1_epi64(16 * 128));
        } else {
          src[v] = sum[v] = _mm512_setzero_si512();
        }
      }
      // output dwords 4L..4L+3 from quad group L: sources 2L (A), 2L + 1 (B)
      auto gather = [&](const __m512i (&from)[8], __m512i ix) {
        __m512i o = _mm512_setzero_si512();
        for (int L = 0; L < 4; ++L)
          o = _mm512_or_si512(o, _mm512_maskz_permutex2var_epi32(static_cast<__mmask16>(0xF << (4 * L)),
                                                                 from[2 * L], ix, from[2 * L + 1]));
        return o;
      };
      int8_t* o = xe + (t * npair + s) * kXeBytes;
      for (int h = 0; h < 2; ++h)
        for (int q = 0; q < 4; ++q) _mm512_store_si512(o + 64 * (4 * h + q), gather(src, pick[h][q]));
      float* f = reinterpret_cast<float*>(o + 512);
      for (int h = 0; h < 2; ++h) {
        const __m512 Q = _mm512_cvtepi32_ps(gather(sum, pick[h][0]));
        // dx of block sub / 2 of the pair: blocks 16s .. 16s + 15 (zeros past nb)
        const int64_t left = a.nb - 16 * s;
        const __mmask16 m = left >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1);
        const __m512 dx = _mm512_permutexvar_ps(block[h], _mm512_maskz_loadu_ps(m, a.d(t) + 16 * s));
        _mm512_store_ps(f + 32 * h, dx);
        _mm512_store_ps(f + 32 * h + 16, _mm512_mul_ps(_mm512_mul_ps(dx, _mm512_set1_ps(43.0f)), Q));
      }
    }
  }
}

template <class Dec, int T>
void gemv_row(const Consts& c, const uint8_t* row, const ActQ& a, const int8_t* xe, float* Y, int64_t ldy,
              int64_t r) {
  const int64_t nsb = a.nb / 8, npair = (nsb + 1) / 2;
  constexpr size_t kB = sizeof(typename Dec::Block);
  __m512 acc[T];
#pragma GCC unroll 3
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  // The next pair's lookups are issued before this pair's codes and dots: in one
  // iteration the chain load -> lookups -> codes -> dots left the out-of-order
  // window, not the pipes, bounding the loop on Zen 4 (family 25 model 17, 1
  // thread, rows in L2, ns per 256 weights at 1 / 3 tokens: IQ2_XS 12.3-12.5 /
  // 18.9-19.1 -> 9.7-10.1 / 13.2-13.7, IQ2_S 14.0-14.5 / 21.0-21.1 -> 10.8-11.1 / 14.6-15.0).
  PairEntries next = pair_entries<Dec>(c, row, nsb > 1);
  for (int64_t s = 0; s < npair; ++s) {
    const uint8_t* p = row + 2 * s * kB;
    prefetch_stream(p, 192);
    const PairEntries cur = next;
    if (s + 1 < npair) next = pair_entries<Dec>(c, p + 2 * kB, 2 * s + 3 < nsb);
    __m512i V[8];
    __m512 wlo, whi;
    decode2<Dec>(c, p, 2 * s + 1 < nsb, cur, V, &wlo, &whi);
#pragma GCC unroll 3
    for (int t = 0; t < T; ++t) {
      const int8_t* x = xe + (t * npair + s) * kXeBytes;
      __m512i Plo = _mm512_dpbusd_epi32(_mm512_setzero_si512(), V[0], _mm512_load_si512(x));
      __m512i Phi = _mm512_dpbusd_epi32(_mm512_setzero_si512(), V[4], _mm512_load_si512(x + 256));
#pragma GCC unroll 3
      for (int q = 1; q < 4; ++q) {
        Plo = _mm512_dpbusd_epi32(Plo, V[q], _mm512_load_si512(x + 64 * q));
        Phi = _mm512_dpbusd_epi32(Phi, V[4 + q], _mm512_load_si512(x + 256 + 64 * q));
      }
      const float* f = reinterpret_cast<const float*>(x + 512);
      acc[t] = _mm512_fmadd_ps(_mm512_fmsub_ps(_mm512_cvtepi32_ps(Plo), _mm512_load_ps(f), _mm512_load_ps(f + 16)),
                               wlo, acc[t]);
      acc[t] = _mm512_fmadd_ps(
          _mm512_fmsub_ps(_mm512_cvtepi32_ps(Phi), _mm512_load_ps(f + 32), _mm512_load_ps(f + 48)), whi, acc[t]);
    }
  }
#pragma GCC unroll 3
  for (int t = 0; t < T; ++t) Y[t * ldy + r] = _mm512_reduce_add_ps(acc[t]);
}

template <class Dec>
void gemv_rows(const WeightMatrix& W, const ActQ& act, int64_t n_tokens, float* Y, int64_t ldy, int64_t r0,
               int64_t r1) {
  const Consts c;
  const int64_t npair = (act.nb / 8 + 1) / 2;
  int8_t* xe = reinterpret_cast<int8_t*>(scratch_bytes(static_cast<size_t>(n_tokens * npair * kXeBytes)));
  xe_layout(act, n_tokens, xe);
  gemv_rows_by_tokens(r0, r1, n_tokens, [&](auto T, int64_t r, int64_t t0) {
    gemv_row<Dec, decltype(T)::value>(c, W.row(r), act, xe + t0 * npair * kXeBytes, Y + t0 * ldy, ldy, r);
  });
}

}  // namespace

void gemv_iq2s_avx512(const WeightMatrix& W, const ActQ& act, int64_t n_tokens, float* Y, int64_t ldy, int64_t r0,
                      int64_t r1) {
  if (W.type == GGMLType::IQ2_S)
    gemv_rows<DecIQ2_S>(W, act, n_tokens, Y, ldy, r0, r1);
  else
    gemv_rows<DecIQ2_XS>(W, act, n_tokens, Y, ldy, r0, r1);
}

}  // namespace qk
}  // namespace pyv4
