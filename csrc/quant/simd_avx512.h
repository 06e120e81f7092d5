// Small AVX-512 helpers shared by the AVX-512 kernel files (include only from
// *_avx512.cpp: anonymous namespace, so each file keeps its own copy).
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "quant/blocks.h"

namespace pyv4 {
namespace qk {
namespace {

// The decode GEMVs stream their rows and prefetch them into L2 (T1) kStreamAhead
// bytes ahead of their loads, where the hardware prefetcher does not reach. On an
// Intel Xeon (family 6 model 207) the hardware prefetcher alone (MXFP4) or with T0
// 2 KB ahead (Q2_K / IQ2_XXS: their earlier policy, the best T0 distance on Zen 4)
// left the DRAM-fed GEMVs stalling (numbers at each GEMV); the types bound by
// their decode (IQ1 / IQ2_S / IQ3) measured the same either way. On Zen 4 it was
// measured for Q8_0 (kernels_avx512.cpp); for IQ2_XXS and Q2_K no prefetch, T1 2-32 KB
// and T0 2-4 KB ahead all ran within the host's noise (bench/RESULTS.md, 2026-12-07).
constexpr int64_t kStreamAhead = 16384;

// IQ4_NL / IQ4_XS codes for vpdpbusd: the non-linear level + 128 (1..241, the
// offset k = 128) of the low nibbles of v's bytes into *lo, of the high ones into *hi.
inline void iq4nl_codes(__m512i v, __m512i* lo, __m512i* hi) {
  const __m512i lut = _mm512_broadcast_i32x4(_mm_add_epi8(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(qblocks::kIq4nlValues)), _mm_set1_epi8(-128)));
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  *lo = _mm512_shuffle_epi8(lut, _mm512_and_si512(v, m4));
  *hi = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(v, 4), m4));
}

// Prefetches the `bytes` (a multiple of 64) from p + kStreamAhead into L2.
inline void prefetch_stream(const void* p, int bytes) {
  const char* q = static_cast<const char*>(p) + kStreamAhead;
  for (int l = 0; l < bytes; l += 64) _mm_prefetch(q + l, _MM_HINT_T1);
}

// [a x4, b x4, c x4, d x4] from the four floats of v.
inline __m512 spread4(__m128 v) {
  const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v));
}

// Sums of the 4 dwords of each 128-bit lane of p0..p3: dword 4L + d of the result
// is the sum of lane L of p_d (for quad-group dots: block L of group d, the order
// of ActQ::dxr).
inline __m512i reduce4(__m512i p0, __m512i p1, __m512i p2, __m512i p3) {
  const __m512i t0 = _mm512_add_epi32(_mm512_unpacklo_epi32(p0, p1), _mm512_unpackhi_epi32(p0, p1));
  const __m512i t1 = _mm512_add_epi32(_mm512_unpacklo_epi32(p2, p3), _mm512_unpackhi_epi32(p2, p3));
  return _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
}

// 7-bit sign fields S (one per byte) with their parity (bit 0 of a byte's
// xor-fold: the shifts stay within a byte) as bit 7: the 8 signs of the field.
inline __m512i with_parity(__m512i S) {
  __m512i par = _mm512_xor_si512(S, _mm512_srli_epi32(S, 4));
  par = _mm512_xor_si512(par, _mm512_srli_epi32(par, 2));
  par = _mm512_xor_si512(par, _mm512_srli_epi32(par, 1));
  return _mm512_or_si512(S, _mm512_slli_epi32(_mm512_and_si512(par, _mm512_set1_epi8(1)), 7));
}
// u = k + g, or k - g in the bytes of neg.
inline __m512i iq_signed(__m512i g, __mmask64 neg, char k) {
  const __m512i kv = _mm512_set1_epi8(k);
  return _mm512_mask_sub_epi8(_mm512_add_epi8(kv, g), neg, kv, g);
}

// The 8-byte entries table[idx] of 16 dword indices: lanes 0..7 into g0, 8..15
// into g1 (lane k of the pair at qword k % 8 of its vector).
inline void gather16(const uint64_t* table, __m512i idx, __m512i* g0, __m512i* g1) {
  const long long* t = reinterpret_cast<const long long*>(table);
  *g0 = _mm512_i32gather_epi64(_mm512_castsi512_si256(idx), t, 8);
  *g1 = _mm512_i32gather_epi64(_mm512_extracti64x4_epi64(idx, 1), t, 8);
}

// vpermi2b (VBMI: only the files built with -mavx512vbmi call it) of the 128
// table bytes in t0, t1 at the low 7 bits of each byte of idx, with both tables
// in registers: left to itself GCC reloads a table from memory for every lookup
// (4 more zmm loads per IQ2_XXS super-block pair; on Zen 4 that measured the
// same, but it leaves the load port to weights and activations).
inline __m512i vpermi2b_lookup(__m512i idx, __m512i t0, __m512i t1) {
  __asm__("vpermi2b %2, %1, %0" : "+v"(idx) : "v"(t0), "v"(t1));
  return idx;
}

}  // namespace
}  // namespace qk
}  // namespace pyv4
