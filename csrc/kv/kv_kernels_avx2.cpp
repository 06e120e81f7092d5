// AVX2+FMA versions of csrc/kv/kv_kernels.cpp (compiled with -mavx2 -mfma; only
// called after CPUID says so). Each sums in a fixed order (8 lanes, a fixed
// horizontal reduction, then the scalar tail), independent of the thread split.
#include <immintrin.h>
#include <math.h>

#include <cstring>

#include "kv/kv_kernels.h"
#include "kv/qat.h"
#include "kv/qat_math.h"
#include "quant/blocks.h"  // bf16_to_f32

namespace pyv4::avx2 {

namespace {

// Head groups h0 .. h0 + 8G of two keys at once: 2G independent FMA chains per
// step hide the FMA latency (G = 4: 8 chains), and each qT load feeds both keys.
template <int G>
inline void score_pair(const float* qT, int64_t nih, int64_t dim, int64_t h0, const float* k0,
                       const float* k1, const float* w, __m256* s0, __m256* s1) {
  __m256 a0[G], a1[G];
#pragma GCC unroll 4
  for (int g = 0; g < G; ++g) a0[g] = a1[g] = _mm256_setzero_ps();
  for (int64_t i = 0; i < dim; ++i) {
    const float* q = qT + i * nih + h0;
    const __m256 b0 = _mm256_broadcast_ss(k0 + i), b1 = _mm256_broadcast_ss(k1 + i);
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) {
      const __m256 qv = _mm256_loadu_ps(q + 8 * g);
      a0[g] = _mm256_fmadd_ps(qv, b0, a0[g]);
      a1[g] = _mm256_fmadd_ps(qv, b1, a1[g]);
    }
  }
  const __m256 z = _mm256_setzero_ps();
#pragma GCC unroll 4
  for (int g = 0; g < G; ++g) {
    const __m256 wv = _mm256_loadu_ps(w + h0 + 8 * g);
    *s0 = _mm256_fmadd_ps(_mm256_max_ps(a0[g], z), wv, *s0);
    *s1 = _mm256_fmadd_ps(_mm256_max_ps(a1[g], z), wv, *s1);
  }
}

inline float hsum8(__m256 s) {
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
  return _mm_cvtss_f32(h);
}

// Attention of HB heads (spec §3.4) over nk rows; see KvKernels::attend.
// Logits come from a register tile of HB heads x 2 rows (for HB = 4: 6 loads
// feed 8 FMAs), outputs from HB heads x 8·CW columns accumulated over all rows
// in registers, so no output row is stored until it is final.
template <int HB, int CW>
inline void out_tile(const float* p, int64_t nk, const float* const* rows, int64_t c, float* out,
                     int64_t d) {
  __m256 acc[HB][CW];
#pragma GCC unroll 4
  for (int h = 0; h < HB; ++h)
    for (int w = 0; w < CW; ++w) acc[h][w] = _mm256_setzero_ps();
  for (int64_t j = 0; j < nk; ++j) {
    __m256 k[CW];
    for (int w = 0; w < CW; ++w) k[w] = _mm256_loadu_ps(rows[j] + c + 8 * w);
#pragma GCC unroll 4
    for (int h = 0; h < HB; ++h) {
      const __m256 pv = _mm256_broadcast_ss(p + h * nk + j);
      for (int w = 0; w < CW; ++w) acc[h][w] = _mm256_fmadd_ps(pv, k[w], acc[h][w]);
    }
  }
#pragma GCC unroll 4
  for (int h = 0; h < HB; ++h)
    for (int w = 0; w < CW; ++w) _mm256_storeu_ps(out + h * d + c + 8 * w, acc[h][w]);
}

template <int HB>
void attend_block(const float* q, int64_t d, const float* const* rows, int64_t nk,
                  const float* sinks, float scale, float* p, float* out) {
  const int64_t d8 = d & ~int64_t(7);
  for (int64_t j = 0; j < nk; j += 2) {
    const float* r0 = rows[j];
    const float* r1 = j + 1 < nk ? rows[j + 1] : r0;  // odd tail: row j twice
    __m256 a[HB][2];
#pragma GCC unroll 4
    for (int h = 0; h < HB; ++h) a[h][0] = a[h][1] = _mm256_setzero_ps();
    for (int64_t i = 0; i < d8; i += 8) {
      const __m256 k0 = _mm256_loadu_ps(r0 + i), k1 = _mm256_loadu_ps(r1 + i);
#pragma GCC unroll 4
      for (int h = 0; h < HB; ++h) {
        const __m256 qv = _mm256_loadu_ps(q + h * d + i);
        a[h][0] = _mm256_fmadd_ps(qv, k0, a[h][0]);
        a[h][1] = _mm256_fmadd_ps(qv, k1, a[h][1]);
      }
    }
    for (int h = 0; h < HB; ++h) {
      float l0 = hsum8(a[h][0]), l1 = hsum8(a[h][1]);
      for (int64_t i = d8; i < d; ++i) {
        l0 += q[h * d + i] * r0[i];
        l1 += q[h * d + i] * r1[i];
      }
      p[h * nk + j] = l0 * scale;
      if (j + 1 < nk) p[h * nk + j + 1] = l1 * scale;
    }
  }
  for (int h = 0; h < HB; ++h) {
    float* s = p + h * nk;
    float mx = sinks[h];
    for (int64_t j = 0; j < nk; ++j) mx = s[j] > mx ? s[j] : mx;
    float denom = expf(sinks[h] - mx);
    for (int64_t j = 0; j < nk; ++j) denom += (s[j] = expf(s[j] - mx));
    for (int64_t j = 0; j < nk; ++j) s[j] /= denom;
  }
  int64_t c = 0;
  for (; c + 16 <= d; c += 16) out_tile<HB, 2>(p, nk, rows, c, out, d);
  for (; c + 8 <= d; c += 8) out_tile<HB, 1>(p, nk, rows, c, out, d);
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

void index_scores(const float* qT, const float* w, int64_t nih, int64_t dim,
                  const float* const* keys, int64_t n, float* out) {
  for (int64_t r = 0; r < n; r += 2) {
    const float* k0 = keys[r];
    const float* k1 = r + 1 < n ? keys[r + 1] : k0;  // odd tail: score k0 twice
    __m256 s0 = _mm256_setzero_ps(), s1 = s0;
    int64_t h = 0;
    for (; h + 32 <= nih; h += 32) score_pair<4>(qT, nih, dim, h, k0, k1, w, &s0, &s1);
    for (; h + 8 <= nih; h += 8) score_pair<1>(qT, nih, dim, h, k0, k1, w, &s0, &s1);
    float t0 = hsum8(s0), t1 = hsum8(s1);
    for (; h < nih; ++h) {  // heads past the last group of 8
      float d0 = 0.0f, d1 = 0.0f;
      for (int64_t i = 0; i < dim; ++i) {
        d0 += qT[i * nih + h] * k0[i];
        d1 += qT[i * nih + h] * k1[i];
      }
      t0 += (d0 > 0.0f ? d0 : 0.0f) * w[h];
      t1 += (d1 > 0.0f ? d1 : 0.0f) * w[h];
    }
    out[r] = t0;
    if (r + 1 < n) out[r + 1] = t1;
  }
}

void decode_fp4(const uint8_t* src, int64_t width, float* row) {
  // |E2M1| by the low 3 bits of a nibble; bit 3 is the sign, moved to bit 31
  // (so -0 stays -0, as in the reference).
  const __m256 lut = _mm256_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f);
  const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const __m128i m4 = _mm_set1_epi8(0x0F);
  const uint8_t* scales = src + width / 2;
  for (int64_t blk = 0; blk < width / 32; ++blk) {
    // UE8M0 scale 2^(e - 127): a normal float for e >= 1, the subnormal 2^-127 for e = 0.
    const uint32_t e = scales[blk];
    const __m256 s = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(e ? e << 23 : 0x00400000u)));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 16 * blk));
    const __m128i lo = _mm_and_si128(b, m4), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m4);
    const __m128i nib[2] = {_mm_unpacklo_epi8(lo, hi), _mm_unpackhi_epi8(lo, hi)};  // element order
    for (int k = 0; k < 4; ++k) {
      const __m128i src8 = (k & 1) ? _mm_srli_si128(nib[k >> 1], 8) : nib[k >> 1];
      const __m256i idx = _mm256_cvtepu8_epi32(src8);
      const __m256 mag = _mm256_permutevar8x32_ps(lut, idx);
      const __m256 v = _mm256_xor_ps(mag, _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(idx, 28), sign)));
      _mm256_storeu_ps(row + 32 * blk + 8 * k, _mm256_mul_ps(v, s));
    }
  }
}

void decode_fp8_main(const uint8_t* src, int64_t nope, int64_t width, float* row) {
  // An e4m3fn byte's low 7 bits shifted left by 7 are the fp16 of its value
  // times 2^-8, subnormals included (fp16 has 4 more exponent bits, a bias 8
  // higher, and the same leading-bit convention); the sign moves to bit 15.
  // So value * s = fp16(...) * (s * 2^8): both products are exact reals
  // rounded once, the same bits as the reference's table value * s. Codes
  // 0x7F / 0xFF are NaN (as the reference's +-NaN). Blocks whose s * 2^8
  // would overflow (scale byte > 246, amax near FLT_MAX) or shorter than 16
  // take the reference's loop.
  const uint8_t* scales = src + nope + (width - nope) * 2;
  const __m256i low7 = _mm256_set1_epi16(0x7F), sign8 = _mm256_set1_epi16(0x80);
  const __m256 nan = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC00000));
  for (int64_t i0 = 0; i0 < nope; i0 += 64) {
    const int64_t len = nope - i0 < 64 ? nope - i0 : 64;
    const uint32_t e = scales[i0 / 64];
    if (e > 246 || len % 16 != 0) {
      const float s = ldexpf(1.0f, static_cast<int>(e) - 127);
      for (int64_t i = i0; i < i0 + len; ++i) row[i] = fp8_e4m3_value(src[i]) * s;
      continue;
    }
    const __m256 s = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>((e + 8) << 23)));  // 2^(e - 119)
    for (int64_t i = i0; i < i0 + len; i += 16) {
      const __m256i w = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
      const __m256i mag = _mm256_and_si256(w, low7);
      const __m256i h = _mm256_or_si256(_mm256_slli_epi16(mag, 7), _mm256_slli_epi16(_mm256_and_si256(w, sign8), 8));
      const __m256i is_nan = _mm256_cmpeq_epi16(mag, low7);
      for (int half = 0; half < 2; ++half) {
        const __m128i h8 = half ? _mm256_extracti128_si256(h, 1) : _mm256_castsi256_si128(h);
        const __m128i n8 = half ? _mm256_extracti128_si256(is_nan, 1) : _mm256_castsi256_si128(is_nan);
        __m256 v = _mm256_mul_ps(_mm256_cvtph_ps(h8), s);
        // NaN codes: the quiet NaN with the code's sign
        const __m256 sign = _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0x80000000u))));
        v = _mm256_blendv_ps(v, _mm256_or_ps(nan, sign), _mm256_castsi256_ps(_mm256_cvtepi16_epi32(n8)));
        _mm256_storeu_ps(row + i + 8 * half, v);
      }
    }
  }
  // rope dims: bf16 is the high half of its fp32
  int64_t i = nope;
  for (; i + 8 <= width; i += 8) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + nope + 2 * (i - nope)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(row + i), _mm256_slli_epi32(_mm256_cvtepu16_epi32(b), 16));
  }
  for (; i < width; ++i) {
    uint16_t b;
    std::memcpy(&b, src + nope + 2 * (i - nope), 2);
    row[i] = qblocks::bf16_to_f32(b);
  }
}

namespace {

// Butterflies of the Hadamard transform within 8 lanes: stage h pairs lane j
// with j ^ h; the lower lane gets a + b, the upper a - b, each with the
// reference's operand order (a the lower lane's value), so the bits match.
template <int Imm, int Blend>
inline __m256 butterfly_in_lanes(__m256 v) {
  const __m256 w = Imm == 0 ? _mm256_permute2f128_ps(v, v, 1) : _mm256_permute_ps(v, Imm);
  return _mm256_blend_ps(_mm256_add_ps(v, w), _mm256_sub_ps(w, v), Blend);
}

// UE8M0 exponent of a 32-block (qat_math::block_scale_exp with the FP4 floor):
// max_ps(|x|, m) keeps m where |x| is NaN, as the reference's comparison does.
inline int fp4_block_exp(const __m256 (&v)[4]) {
  const __m256 abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 m = _mm256_setzero_ps();
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) m = _mm256_max_ps(_mm256_and_ps(v[k], abs), m);
  m = _mm256_max_ps(m, _mm256_permute2f128_ps(m, m, 1));
  m = _mm256_max_ps(m, _mm256_permute_ps(m, 0x4E));
  m = _mm256_max_ps(m, _mm256_permute_ps(m, 0xB1));
  float amax = _mm256_cvtss_f32(m);
  amax = amax < qat_math::kFp4Floor ? qat_math::kFp4Floor : amax;
  return qat_math::log2_ceil_bits(amax * qat_math::kFp4Inv);
}

// qat_math::e2m1_code_abs of 8 magnitudes: 7 minus the thresholds a stays
// under (a compare is -1 where true).
inline __m256i e2m1_codes(__m256 a) {
  __m256i c = _mm256_set1_epi32(7);
  c = _mm256_add_epi32(c, _mm256_castps_si256(_mm256_cmp_ps(a, _mm256_set1_ps(0.25f), _CMP_LE_OQ)));
  c = _mm256_add_epi32(c, _mm256_castps_si256(_mm256_cmp_ps(a, _mm256_set1_ps(0.75f), _CMP_LT_OQ)));
  c = _mm256_add_epi32(c, _mm256_castps_si256(_mm256_cmp_ps(a, _mm256_set1_ps(1.25f), _CMP_LE_OQ)));
  c = _mm256_add_epi32(c, _mm256_castps_si256(_mm256_cmp_ps(a, _mm256_set1_ps(1.75f), _CMP_LT_OQ)));
  c = _mm256_add_epi32(c, _mm256_castps_si256(_mm256_cmp_ps(a, _mm256_set1_ps(2.5f), _CMP_LE_OQ)));
  c = _mm256_add_epi32(c, _mm256_castps_si256(_mm256_cmp_ps(a, _mm256_set1_ps(3.5f), _CMP_LT_OQ)));
  return _mm256_add_epi32(c, _mm256_castps_si256(_mm256_cmp_ps(a, _mm256_set1_ps(5.0f), _CMP_LE_OQ)));
}

}  // namespace

void index_round_fp4(float* x, int64_t width, uint8_t* rec, size_t rec_bytes) {
  // Hadamard: stages 1, 2, 4 inside each vector, then vector pairs h / 8 apart.
  for (int64_t i = 0; i < width; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    v = butterfly_in_lanes<0xB1, 0xAA>(v);
    v = butterfly_in_lanes<0x4E, 0xCC>(v);
    v = butterfly_in_lanes<0, 0xF0>(v);
    _mm256_storeu_ps(x + i, v);
  }
  for (int64_t h = 8; h < width; h *= 2)
    for (int64_t i = 0; i < width; i += 2 * h)
      for (int64_t j = i; j < i + h; j += 8) {
        const __m256 a = _mm256_loadu_ps(x + j), b = _mm256_loadu_ps(x + j + h);
        _mm256_storeu_ps(x + j, _mm256_add_ps(a, b));
        _mm256_storeu_ps(x + j + h, _mm256_sub_ps(a, b));
      }
  const __m256 scale = _mm256_set1_ps(static_cast<float>(1.0 / sqrt(static_cast<double>(width))));
  const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0x80000000u)));
  const __m256 mx = _mm256_set1_ps(qat_math::kFp4Max), mmx = _mm256_set1_ps(-qat_math::kFp4Max);
  const __m256i one = _mm256_set1_epi32(1);
  for (int64_t b0 = 0; b0 < width; b0 += 32) {
    __m256 v[4];
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) v[k] = _mm256_mul_ps(_mm256_loadu_ps(x + b0 + 8 * k), scale);
    // FP4 QAT (qat_math::act_quant_block): y = clamp(x / s, +-6) rounded to e2m1, times s
    const __m256 s = _mm256_set1_ps(ldexpf(1.0f, fp4_block_exp(v)));
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      __m256 y = _mm256_div_ps(v[k], s);
      y = _mm256_blendv_ps(y, mx, _mm256_cmp_ps(mx, y, _CMP_LT_OQ));
      y = _mm256_blendv_ps(y, mmx, _mm256_cmp_ps(y, mmx, _CMP_LT_OQ));
      const __m256i c = e2m1_codes(_mm256_andnot_ps(sign, y));
      // qat_math::e2m1_abs_value: 2^(c/2 - 1) (1 + (c & 1) / 2) from c >= 2, 0.5 at 1, 0 at 0
      const __m256i normal = _mm256_or_si256(
          _mm256_slli_epi32(_mm256_add_epi32(_mm256_srli_epi32(c, 1), _mm256_set1_epi32(126)), 23),
          _mm256_slli_epi32(_mm256_and_si256(c, one), 22));
      const __m256i val = _mm256_or_si256(
          _mm256_and_si256(normal, _mm256_cmpgt_epi32(c, one)),
          _mm256_and_si256(_mm256_set1_epi32(0x3F000000), _mm256_cmpeq_epi32(c, one)));
      v[k] = _mm256_mul_ps(_mm256_or_ps(_mm256_castsi256_ps(val), _mm256_and_ps(y, sign)), s);
      _mm256_storeu_ps(x + b0 + 8 * k, v[k]);
    }
    if (!rec) continue;
    // The record from the rounded block, as qat_math::encode_block derives it
    // (its own scale, which may be half the QAT's).
    const int e = fp4_block_exp(v);
    const __m256 s2 = _mm256_set1_ps(ldexpf(1.0f, e));
    alignas(32) int32_t nib[32];
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      const __m256 y = _mm256_div_ps(v[k], s2);
      const __m256i neg = _mm256_srli_epi32(_mm256_castps_si256(y), 31);
      const __m256i c = _mm256_or_si256(e2m1_codes(_mm256_andnot_ps(sign, y)), _mm256_slli_epi32(neg, 3));
      _mm256_store_si256(reinterpret_cast<__m256i*>(nib + 8 * k), c);
    }
    for (int k = 0; k < 16; ++k) rec[b0 / 2 + k] = static_cast<uint8_t>(nib[2 * k] | nib[2 * k + 1] << 4);
    rec[width / 2 + b0 / 32] = static_cast<uint8_t>(e + 127);
  }
  if (rec) {
    const size_t used = static_cast<size_t>(width / 2 + width / 32);
    if (rec_bytes > used) std::memset(rec + used, 0, rec_bytes - used);
  }
}

}  // namespace pyv4::avx2
