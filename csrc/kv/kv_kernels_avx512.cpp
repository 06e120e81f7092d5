// AVX-512 versions of csrc/kv/kv_kernels.cpp: attention over cached rows, and
// indexer scoring on FP4 records (KVType::FP8) with VNNI. Compiled with the
// AVX-512 flags; called only when the active ISA is AVX-512 (which includes
// VNNI, csrc/quant/cpu_features.cpp).
//
// attend: the AVX2 kernel's tiling at 16 lanes (logits of 4 heads x 4 rows,
// outputs of 4 heads x 64 columns accumulated over all rows in registers).
// Each (head, row) logit sums its 16 lanes in a fixed order, so results do not
// depend on the thread split or on which tokens share a chunk.
//
// Query and keys are FP4 e2m1 with a UE8M0 scale per 32 elements (spec §3.6),
// so per block b: q·k = s_q s_k / 4 · Σ (2 e2m1_q)(2 e2m1_k), an exact integer
// dot of codes in [-12, 12]. vpdpbusd needs one unsigned operand: the key codes
// are u = 2 e2m1 + 12 in [0, 24], and 12 · Σ q is subtracted per (head, block).
// One broadcast dword of 4 key codes meets 16 heads' 4 query codes at once, so
// a key costs dim/4 · nih/16 vpdpbusd instead of dim · nih / 8 FMAs.
//
// Prepared query (fp4_query), for head group g (16 heads) and block b:
//   codes  [g][b][part][j]: 64 B, lane h = 4 signed codes of head 16g + h at
//          record bytes 16b + 4j .. + 3, low (part 0) or high (part 1) nibbles
//   scale  [g][b]: 16 floats s_q / 4      offset [g][b]: 16 int32 12 · Σ codes
#include <immintrin.h>

#include <cstring>
#include <math.h>

#include "kv/kv_kernels.h"

namespace pyv4::avx512 {

namespace {

constexpr int64_t kGroupBlockBytes = 8 * 64 + 64 + 64;  // codes, scales, offsets

inline float ue8m0(uint32_t e) {  // 2^(e - 127); e = 0 is the subnormal 2^-127
  const uint32_t bits = e ? e << 23 : 0x00400000u;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline const uint8_t* group_block(const uint8_t* prep, int64_t nblk, int64_t g, int64_t b) {
  return prep + (g * nblk + b) * kGroupBlockBytes;
}

// Score contributions of head groups g0 .. g0 + G - 1 for one key (codes kc of
// the low / high nibbles, block scales ks) added to *sum.
template <int G>
inline void score_groups(const uint8_t* prep, int64_t nblk, int64_t g0, const uint8_t (&kc)[2][256],
                         const float* ks, const float* w, __m512* sum) {
  __m512 d[G];
  for (int g = 0; g < G; ++g) d[g] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nblk; ++b) {
    __m512i acc[G];
    for (int g = 0; g < G; ++g) acc[g] = _mm512_setzero_si512();
#pragma GCC unroll 2
    for (int part = 0; part < 2; ++part) {
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        int32_t k4;
        std::memcpy(&k4, &kc[part][16 * b + 4 * j], 4);
        const __m512i bk = _mm512_set1_epi32(k4);
#pragma GCC unroll 4
        for (int g = 0; g < G; ++g) {
          const uint8_t* q = group_block(prep, nblk, g0 + g, b) + (part * 4 + j) * 64;
          acc[g] = _mm512_dpbusd_epi32(acc[g], bk, _mm512_loadu_si512(q));
        }
      }
    }
    const __m512 kscale = _mm512_set1_ps(ks[b]);
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) {
      const uint8_t* gb = group_block(prep, nblk, g0 + g, b);
      const __m512i off = _mm512_loadu_si512(gb + 8 * 64 + 64);
      const __m512 qscale = _mm512_loadu_ps(reinterpret_cast<const float*>(gb + 8 * 64));
      const __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[g], off));
      d[g] = _mm512_fmadd_ps(f, _mm512_mul_ps(qscale, kscale), d[g]);
    }
  }
  for (int g = 0; g < G; ++g) {
    *sum = _mm512_fmadd_ps(_mm512_max_ps(d[g], _mm512_setzero_ps()), _mm512_loadu_ps(w + 16 * (g0 + g)),
                           *sum);
  }
}

// e^x, 16 lanes: x = n ln2 + r with |r| <= ln2/2 (ln2 in two parts), e^r by
// the Cephes expf polynomial (~1 ulp), 2^n by vscalefps (0 for very negative x:
// the softmax arguments here are <= 0).
inline __m512 exp16(__m512 x) {
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(y, n);
}

// In place: s[j] <- e^(s[j] - m) / (e^(sink - m) + sum_j e^(s[j] - m)), m the
// largest of sink and s (spec §3.4: the sink joins the denominator only).
inline void softmax_sink(float* s, int64_t nk, float sink) {
  __m512 vmx = _mm512_set1_ps(sink);
  int64_t j = 0;
  for (; j + 16 <= nk; j += 16) vmx = _mm512_max_ps(vmx, _mm512_loadu_ps(s + j));
  const __mmask16 tail = static_cast<__mmask16>((1u << (nk - j)) - 1u);
  vmx = _mm512_mask_max_ps(vmx, tail, vmx, _mm512_maskz_loadu_ps(tail, s + j));
  const float mx = _mm512_reduce_max_ps(vmx);
  const __m512 m = _mm512_set1_ps(mx);
  __m512 sum = _mm512_setzero_ps();
  for (j = 0; j + 16 <= nk; j += 16) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + j), m));
    _mm512_storeu_ps(s + j, e);
    sum = _mm512_add_ps(sum, e);
  }
  const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, s + j), m));
  _mm512_mask_storeu_ps(s + j, tail, e);
  sum = _mm512_mask_add_ps(sum, tail, sum, e);
  const __m512 inv = _mm512_set1_ps(1.0f / (expf(sink - mx) + _mm512_reduce_add_ps(sum)));
  for (j = 0; j + 16 <= nk; j += 16) _mm512_storeu_ps(s + j, _mm512_mul_ps(_mm512_loadu_ps(s + j), inv));
  _mm512_mask_storeu_ps(s + j, tail, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, s + j), inv));
}

// Outputs of HB heads x 16·CW columns from c, accumulated over all nk rows.
template <int HB, int CW>
inline void out_tile(const float* p, int64_t nk, const float* const* rows, int64_t c, float* out,
                     int64_t d) {
  __m512 acc[HB][CW];
#pragma GCC unroll 4
  for (int h = 0; h < HB; ++h)
    for (int w = 0; w < CW; ++w) acc[h][w] = _mm512_setzero_ps();
  for (int64_t j = 0; j < nk; ++j) {
    __m512 k[CW];
#pragma GCC unroll 4
    for (int w = 0; w < CW; ++w) k[w] = _mm512_loadu_ps(rows[j] + c + 16 * w);
#pragma GCC unroll 4
    for (int h = 0; h < HB; ++h) {
      const __m512 pv = _mm512_set1_ps(p[h * nk + j]);
#pragma GCC unroll 4
      for (int w = 0; w < CW; ++w) acc[h][w] = _mm512_fmadd_ps(pv, k[w], acc[h][w]);
    }
  }
#pragma GCC unroll 4
  for (int h = 0; h < HB; ++h)
    for (int w = 0; w < CW; ++w) _mm512_storeu_ps(out + h * d + c + 16 * w, acc[h][w]);
}

template <int HB>
void attend_block(const float* q, int64_t d, const float* const* rows, int64_t nk,
                  const float* sinks, float scale, float* p, float* out) {
  constexpr int kRows = 4;
  const int64_t d16 = d & ~int64_t(15);
  for (int64_t j = 0; j < nk; j += kRows) {
    const float* r[kRows];
    for (int u = 0; u < kRows; ++u) r[u] = j + u < nk ? rows[j + u] : rows[j];  // tail: row j again
    __m512 a[HB][kRows];
#pragma GCC unroll 4
    for (int h = 0; h < HB; ++h)
      for (int u = 0; u < kRows; ++u) a[h][u] = _mm512_setzero_ps();
    for (int64_t i = 0; i < d16; i += 16) {
      __m512 k[kRows];
#pragma GCC unroll 4
      for (int u = 0; u < kRows; ++u) k[u] = _mm512_loadu_ps(r[u] + i);
#pragma GCC unroll 4
      for (int h = 0; h < HB; ++h) {
        const __m512 qv = _mm512_loadu_ps(q + h * d + i);
#pragma GCC unroll 4
        for (int u = 0; u < kRows; ++u) a[h][u] = _mm512_fmadd_ps(qv, k[u], a[h][u]);
      }
    }
    for (int h = 0; h < HB; ++h) {
      for (int u = 0; u < kRows && j + u < nk; ++u) {
        float l = _mm512_reduce_add_ps(a[h][u]);
        for (int64_t i = d16; i < d; ++i) l += q[h * d + i] * r[u][i];
        p[h * nk + j + u] = l * scale;
      }
    }
  }
  for (int h = 0; h < HB; ++h) softmax_sink(p + h * nk, nk, sinks[h]);
  int64_t c = 0;
  for (; c + 64 <= d; c += 64) out_tile<HB, 4>(p, nk, rows, c, out, d);
  for (; c + 16 <= d; c += 16) out_tile<HB, 1>(p, nk, rows, c, out, d);
  for (; c < d; ++c) {
    for (int h = 0; h < HB; ++h) {
      float o = 0.0f;
      for (int64_t j = 0; j < nk; ++j) o += p[h * nk + j] * rows[j][c];
      out[h * d + c] = o;
    }
  }
}

}  // namespace

void attend(const float* q, int64_t nh, int64_t d, const float* const* rows, int64_t nk,
            const float* sinks, float scale, float* p, float* out) {
  int64_t h = 0;
  for (; h + 4 <= nh; h += 4) attend_block<4>(q + h * d, d, rows, nk, sinks + h, scale, p + h * nk, out + h * d);
  for (; h < nh; ++h) attend_block<1>(q + h * d, d, rows, nk, sinks + h, scale, p + h * nk, out + h * d);
}

void fp4_query(const uint8_t* q_recs, int64_t stride, int64_t nih, int64_t dim, uint8_t* prep) {
  static const int8_t kCode[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
  const int64_t nblk = dim / 32;
  for (int64_t h = 0; h < nih; ++h) {
    const uint8_t* rec = q_recs + h * stride;
    const int64_t g = h / 16, lane = h % 16;
    for (int64_t b = 0; b < nblk; ++b) {
      uint8_t* gb = prep + (g * nblk + b) * kGroupBlockBytes;
      int32_t sum = 0;
      for (int k = 0; k < 16; ++k) {
        const uint8_t byte = rec[16 * b + k];
        const int8_t lo = kCode[byte & 15], hi = kCode[byte >> 4];
        gb[(0 * 4 + k / 4) * 64 + 4 * lane + k % 4] = static_cast<uint8_t>(lo);
        gb[(1 * 4 + k / 4) * 64 + 4 * lane + k % 4] = static_cast<uint8_t>(hi);
        sum += lo + hi;
      }
      const float s = ue8m0(rec[dim / 2 + b]) * 0.25f;
      const int32_t off = 12 * sum;
      std::memcpy(gb + 8 * 64 + 4 * lane, &s, 4);
      std::memcpy(gb + 8 * 64 + 64 + 4 * lane, &off, 4);
    }
  }
}

void index_scores_fp4(const uint8_t* prep, const float* w, int64_t nih, int64_t dim,
                      const uint8_t* const* keys, int64_t n, float* out) {
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  const __m512i lut = _mm512_broadcast_i32x4(
      _mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0));  // 2·E2M1 + 12
  const int64_t nblk = dim / 32, nbytes = dim / 2, ng = nih / 16;
  alignas(64) uint8_t kc[2][256];
  float ks[16];
  for (int64_t r = 0; r < n; ++r) {
    const uint8_t* rec = keys[r];
    for (int64_t off = 0; off < nbytes; off += 64) {
      const __mmask64 m = nbytes - off >= 64 ? ~0ull : (1ull << (nbytes - off)) - 1;
      const __m512i z = _mm512_maskz_loadu_epi8(m, rec + off);
      _mm512_store_si512(kc[0] + off, _mm512_shuffle_epi8(lut, _mm512_and_si512(z, m4)));
      _mm512_store_si512(kc[1] + off, _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(z, 4), m4)));
    }
    for (int64_t b = 0; b < nblk; ++b) ks[b] = ue8m0(rec[nbytes + b]);
    __m512 sum = _mm512_setzero_ps();
    int64_t g = 0;
    for (; g + 4 <= ng; g += 4) score_groups<4>(prep, nblk, g, kc, ks, w, &sum);
    for (; g < ng; ++g) score_groups<1>(prep, nblk, g, kc, ks, w, &sum);
    out[r] = _mm512_reduce_add_ps(sum);
  }
}

}  // namespace pyv4::avx512
