// The importance-weighted Q2_K / Q3_K / IQ2_XXS / IQ4_XS / Q5_K / Q6_K searches (convert/quants_lowbit.py
// is the reference; each function here names the reference function it mirrors).
// Exactness rules, kept everywhere below:
//   * float32 arithmetic in the reference's order, no fused multiply-add
//     (CMakeLists.txt compiles these files with -ffp-contract=off);
//   * float64 where numpy promotes: the candidate steps np.arange(-9, 10) *
//     float32(0.1) are float64, so the inverse scales built from them are
//     divided in float64 and rounded once to float32;
//   * sums are np.sum's (np_sum); argmax / argmin return the first extreme
//     (numpy's rule), the code of a value is round-half-even then clipped;
//   * _div(a, b) is a / b where b != 0, else +0.
// The hot loops come per ISA, chosen by active_isa(): the IQ2_XXS grid search
// (quant/quantize_lowbit_kernels.h; the SSE2 baseline at the end of this file)
// and the Q2_K / Q3_K / Q5_K / Q6_K sub-block fits, one sub-block per vector lane
// (quant/quantize_lowbit_lanes.h). Each super-block is independent: the pool
// splits the matrix's blocks over its threads.
#include "quant/quantize_lowbit.h"

#include <emmintrin.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "common/error.h"
#include "quant/blocks.h"
#include "quant/cpu_features.h"
#include "quant/iq2xxs_grid.h"
#include "quant/quantize_lowbit_kernels.h"
#include "quant/quantize_lowbit_lanes.h"

namespace pyv4 {

using qblocks::f16_to_f32;
using qblocks::f32_to_bits;

uint16_t f32_to_f16_bits(float v) {
  const uint32_t x = f32_to_bits(v);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) {  // inf, or NaN keeping the top payload bits (as numpy)
    const uint32_t m = (ax & 0x7fffffu) >> 13;
    return static_cast<uint16_t>(sign | 0x7c00 | (ax == 0x7f800000u ? 0 : (m ? m : 1)));
  }
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00);  // >= 65520: inf
  if (ax < 0x38800000u) {  // below 2^-14: a subnormal half (units of 2^-24) or zero
    if (ax <= 0x33000000u) return sign;  // <= 2^-25 (the tie goes to the even 0)
    const uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e, half = 1u << (shift - 1), rem = m & ((half << 1) - 1);
    uint32_t q = m >> shift;
    if (rem > half || (rem == half && (q & 1))) ++q;
    return static_cast<uint16_t>(sign | q);
  }
  uint32_t h = (ax >> 13) - ((127 - 15) << 10);
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) ++h;  // a carry moves into the exponent
  return static_cast<uint16_t>(sign | h);
}

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// numpy's float32 np.sum along a contiguous axis: the identity +0 plus the
// pairwise sum (numpy's loops_utils.h: below 8 values one running sum from -0;
// up to 128 eight interleaved partial sums combined as
// ((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7)), then the remainder; above 128 the two
// halves, cut at a multiple of 8, summed separately).
float pairwise(const float* a, int n) {
  if (n < 8) {
    float r = -0.0f;
    for (int i = 0; i < n; ++i) r += a[i];
    return r;
  }
  if (n <= 128) {
    float r[8];
    for (int j = 0; j < 8; ++j) r[j] = a[j];
    int i = 8;
    for (; i < n - n % 8; i += 8)
      for (int j = 0; j < 8; ++j) r[j] += a[i + j];
    float res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += a[i];
    return res;
  }
  int n2 = n / 2;
  n2 -= n2 % 8;
  return pairwise(a, n2) + pairwise(a + n2, n - n2);
}

float np_sum(const float* a, int n) { return 0.0f + pairwise(a, n); }

float div0(float a, float b) { return b != 0 ? a / b : 0.0f; }

// np.rint: round half to even. Below 2^22 in magnitude, adding and removing
// 1.5 * 2^23 rounds in the float32 addition (far cheaper than the libm call the
// baseline ISA needs for nearbyint); the sign is v's, so -0.3 gives -0 as rint.
float round_even(float v) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
  if (!(std::fabs(v) < 4194304.0f)) return std::nearbyint(v);  // large (already whole), inf, NaN
  return std::copysign((v + kMagic) - kMagic, v);
}

// np.clip(np.rint(v), lo, hi): clip keeps v when it is not below lo / above hi
// (so -0 and NaN stay, as numpy's).
float rint_clip(float v, float lo, float hi) {
  const float r = round_even(v);
  return r < lo ? lo : (r > hi ? hi : r);
}

// The first index of the largest |v[i]| (np.abs(v).argmax()).
int argmax_abs(const float* v, int n) {
  int k = 0;
  float m = std::fabs(v[0]);
  for (int i = 1; i < n; ++i) {
    const float a = std::fabs(v[i]);
    if (!(a <= m)) {  // numpy's loop: a NaN wins and stops the search
      m = a;
      k = i;
      if (std::isnan(a)) break;
    }
  }
  return k;
}

// element_weights: w = sqrt(sigma2 + x^2) (* importance), sigma2 the super-block's mean square.
void element_weights(const float* x, const float* imp, float* w) {
  float sq[256];
  for (int i = 0; i < 256; ++i) sq[i] = x[i] * x[i];
  const float sigma2 = np_sum(sq, 256) / 256.0f;
  for (int i = 0; i < 256; ++i) w[i] = std::sqrt(sigma2 + sq[i]);
  if (imp)
    for (int i = 0; i < 256; ++i) w[i] *= imp[i];
}

// _super_scale: f16 d and integers L[n] in [lo, hi] with v ~ d*L, weighted by sw (n <= 16).
uint16_t super_scale(const float* v, const float* sw, int n, int lo, int hi, int* L) {
  const float amax = v[argmax_abs(v, n)];
  const float top = static_cast<float>(amax < 0 ? lo : hi), flo = static_cast<float>(lo),
              fhi = static_cast<float>(hi);
  float best_err = kInf;
  uint16_t best_d = 0;
  static constexpr double kFactors[5] = {0.9, 0.95, 1.0, 1.05, 1.1};
  float t[16], u[16];
  for (double f : kFactors) {
    const float d0 = div0(amax, top * static_cast<float>(f));
    for (int i = 0; i < n; ++i) {
      const float q = rint_clip(div0(v[i], d0), flo, fhi);
      const float swq = sw[i] * q;
      t[i] = (sw[i] * v[i]) * q;
      u[i] = swq * q;
    }
    const float d1 = div0(np_sum(t, n), np_sum(u, n));  // the weighted least-squares refit
    for (float d : {d0, d1}) {
      const uint16_t d16 = f32_to_f16_bits(d);
      const float d32 = f16_to_f32(d16);
      for (int i = 0; i < n; ++i) {
        const float e = v[i] - d32 * rint_clip(div0(v[i], d32), flo, fhi);
        t[i] = sw[i] * (e * e);
      }
      const float err = np_sum(t, n);
      if (err < best_err) {
        best_err = err;
        best_d = d16;
      }
    }
  }
  const float d32 = f16_to_f32(best_d);
  for (int i = 0; i < n; ++i) L[i] = static_cast<int>(rint_clip(div0(v[i], d32), flo, fhi));
  return best_d;
}

void store_u16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }

// The hot loops for the active ISA (quant/quantize_lowbit_kernels.h).
struct IsaOps {
  void (*dots)(const float* wa, const float* w, const float* g, const float* gg, float* A, float* B);
  void (*pick)(const float* A, const float* B, const float* h, int nh, int* out);
  void (*fit_affine)(const float* x, const float* w, int nmax, int sub, float* s, float* m);
  void (*fit_symmetric)(const float* x, const float* w, int nmax, float* s);
};

IsaOps isa_ops() {
  using namespace lowbit;
  switch (active_isa()) {
    case Isa::AVX512:
      return {grid_dots_avx512, grid_pick_avx512, fit_affine_avx512, fit_symmetric_avx512};
    case Isa::AVX2:
      return {grid_dots_avx2, grid_pick_avx2, fit_affine_avx2, fit_symmetric_avx2};
    default:
      return {grid_dots_sse2, grid_pick_sse2, fit_affine_sse2, fit_symmetric_sse2};
  }
}

// _affine_codes (Q2_K, Q5_K) of one super-block: per sub-block of `sub` values
// (16 or 32) the scale and min, quantized to 0..smax against f16 d / dmin, and
// the codes 0..nmax for the scale and min the decoder forms (float32 d*sc, dmin*m).
struct AffineCodes {
  uint16_t d16, dm16;
  int sc[16], mq[16];
  int q[256];
};
void affine_codes(const float* x, const float* imp, int sub, int nmax, int smax, const IsaOps& ops,
                  AffineCodes* c) {
  const int ns = 256 / sub;
  float w[256], scale[16], mins[16], sw[16];
  element_weights(x, imp, w);
  ops.fit_affine(x, w, nmax, sub, scale, mins);
  for (int s = 0; s < ns; ++s) sw[s] = np_sum(w + sub * s, sub);
  c->d16 = super_scale(scale, sw, ns, 0, smax, c->sc);
  c->dm16 = super_scale(mins, sw, ns, 0, smax, c->mq);
  const float d = f16_to_f32(c->d16), dm = f16_to_f32(c->dm16);
  for (int s = 0; s < ns; ++s) {
    const float eff_d = d * static_cast<float>(c->sc[s]), eff_m = dm * static_cast<float>(c->mq[s]);
    for (int l = 0; l < sub; ++l) {
      const float v = div0(x[sub * s + l] + eff_m, eff_d);
      c->q[sub * s + l] = static_cast<int>(rint_clip(v, 0.0f, static_cast<float>(nmax)));
    }
  }
}

// _symmetric_codes (Q3_K, Q6_K) of one super-block: per sub-block of 16 the scale,
// quantized to slo..shi against an f16 d, and the codes 0..2 nmax - 1 (value
// code - nmax) for the decoder's float32 d*sc.
struct SymmetricCodes {
  uint16_t d16;
  int sc[16];
  int q[256];
};
void symmetric_codes(const float* x, const float* imp, int nmax, int slo, int shi, const IsaOps& ops,
                     SymmetricCodes* c) {
  float w[256], scale[16], sw[16];
  element_weights(x, imp, w);
  ops.fit_symmetric(x, w, nmax, scale);
  for (int s = 0; s < 16; ++s) sw[s] = np_sum(w + 16 * s, 16);
  c->d16 = super_scale(scale, sw, 16, slo, shi, c->sc);
  const float d = f16_to_f32(c->d16), fn = static_cast<float>(nmax);
  for (int s = 0; s < 16; ++s) {
    const float eff = d * static_cast<float>(c->sc[s]);
    for (int l = 0; l < 16; ++l)
      c->q[16 * s + l] = static_cast<int>(rint_clip(div0(x[16 * s + l], eff), -fn, fn - 1.0f)) + nmax;
  }
}

// _q2_k_rows for one super-block.
void q2_k_block(const float* x, const float* imp, uint8_t* out, const IsaOps& ops) {
  AffineCodes c;
  affine_codes(x, imp, 16, 3, 15, ops, &c);
  std::memset(out, 0, 84);
  for (int s = 0; s < 16; ++s) out[s] = static_cast<uint8_t>(c.sc[s] | (c.mq[s] << 4));
  for (int e = 0; e < 256; ++e)  // element 128h + 32j + l' -> byte 16 + 32h + l', bits 2j
    out[16 + 32 * (e / 128) + e % 32] |= static_cast<uint8_t>(c.q[e] << (2 * ((e / 32) % 4)));
  store_u16(out + 80, c.d16);
  store_u16(out + 82, c.dm16);
}

// _q3_k_rows for one super-block.
void q3_k_block(const float* x, const float* imp, uint8_t* out, const IsaOps& ops) {
  SymmetricCodes c;
  symmetric_codes(x, imp, 4, -32, 31, ops, &c);  // codes 0..7
  std::memset(out, 0, 110);
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, j = (e / 32) % 4, i = e % 32;
    out[i] |= static_cast<uint8_t>((c.q[e] >> 2) << (4 * h + j));       // hmask
    out[32 + 32 * h + i] |= static_cast<uint8_t>((c.q[e] & 3) << (2 * j));  // low bits
  }
  // pack_q3_k_scales: scale s (+32) has its low nibble in byte s % 8 (high
  // half for s >= 8), its top 2 bits at bit 2*(s / 4) of byte 8 + s % 4
  uint8_t* sp = out + 96;
  for (int s = 0; s < 16; ++s) {
    const int u = c.sc[s] + 32;
    sp[s % 8] |= static_cast<uint8_t>((u & 15) << (s < 8 ? 0 : 4));
    sp[8 + s % 4] |= static_cast<uint8_t>((u >> 4) << (2 * (s / 4)));
  }
  store_u16(out + 108, c.d16);
}

// _q6_k_rows for one super-block.
void q6_k_block(const float* x, const float* imp, uint8_t* out, const IsaOps& ops) {
  SymmetricCodes c;
  symmetric_codes(x, imp, 32, -128, 127, ops, &c);  // codes 0..63
  std::memset(out, 0, 210);
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, j = (e / 32) % 4, i = e % 32;
    out[64 * h + 32 * (j % 2) + i] |= static_cast<uint8_t>((c.q[e] & 15) << (4 * (j / 2)));  // ql
    out[128 + 32 * h + i] |= static_cast<uint8_t>((c.q[e] >> 4) << (2 * j));               // qh
  }
  for (int s = 0; s < 16; ++s) out[192 + s] = static_cast<uint8_t>(c.sc[s]);  // int8, two's complement
  store_u16(out + 208, c.d16);
}

// _q5_k_rows for one super-block: 8 sub-blocks of 32.
void q5_k_block(const float* x, const float* imp, uint8_t* out, const IsaOps& ops) {
  AffineCodes c;
  affine_codes(x, imp, 32, 31, 63, ops, &c);
  std::memset(out, 0, 176);
  store_u16(out, c.d16);
  store_u16(out + 2, c.dm16);
  // quants.py _pack_k_scales: 6-bit scales and mins of sub-blocks 0..3 in bytes
  // 0..3 / 4..7, those of 4..7 split into the low nibbles (bytes 8..11) and the
  // top 2 bits of bytes 0..3 / 4..7
  uint8_t* sp = out + 4;
  for (int j = 0; j < 4; ++j) {
    sp[j] = static_cast<uint8_t>(c.sc[j] | ((c.sc[j + 4] >> 4) << 6));
    sp[4 + j] = static_cast<uint8_t>(c.mq[j] | ((c.mq[j + 4] >> 4) << 6));
    sp[8 + j] = static_cast<uint8_t>((c.sc[j + 4] & 15) | ((c.mq[j + 4] & 15) << 4));
  }
  for (int e = 0; e < 256; ++e) {
    const int s = e / 32, l = e % 32;
    out[16 + l] |= static_cast<uint8_t>((c.q[e] >> 4) << s);                         // qh: bit s
    out[48 + 32 * (s / 2) + l] |= static_cast<uint8_t>((c.q[e] & 15) << (4 * (s % 2)));  // qs nibbles
  }
}

// The index of the IQ4_NL level nearest v: np.abs(v - levels).argmin(), the
// first of equals (the first NaN: index 0 for a NaN v).
int nearest_iq4_level(float v) {
  float m = std::fabs(v - static_cast<float>(qblocks::kIq4nlValues[0]));
  if (std::isnan(m)) return 0;
  int k = 0;
  for (int i = 1; i < 16; ++i) {
    const float d = std::fabs(v - static_cast<float>(qblocks::kIq4nlValues[i]));
    if (d < m) {
      m = d;
      k = i;
    }
  }
  return k;
}

// _iq4_xs_rows for one super-block: 8 blocks of 32.
void iq4_xs_block(const float* x, const float* imp, uint8_t* out) {
  float w[256], scale[8], sw[8], t[32], u[32];
  element_weights(x, imp, w);
  for (int b = 0; b < 8; ++b) {
    const float* xb = x + 32 * b;
    const float* wb = w + 32 * b;
    const float amax = xb[argmax_abs(xb, 32)];
    float best = -1.0f;
    scale[b] = 0.0f;
    for (int st = -7; st <= 7; ++st) {  // the largest value near level -127 + st
      const float iscale = div0(static_cast<float>(st - 127), amax);
      for (int i = 0; i < 32; ++i) {
        const float q = static_cast<float>(qblocks::kIq4nlValues[nearest_iq4_level(iscale * xb[i])]);
        const float wq = wb[i] * q;
        t[i] = wq * xb[i];
        u[i] = wq * q;
      }
      const float swqx = np_sum(t, 32), swqq = np_sum(u, 32);
      const float score = div0(swqx * swqx, swqq);
      if (swqq > 0 && score > best) {
        best = score;
        scale[b] = div0(swqx, swqq);
      }
    }
    sw[b] = np_sum(wb, 32);
  }
  int L[8];
  const uint16_t d16 = super_scale(scale, sw, 8, -32, 31, L);
  const float d = f16_to_f32(d16);
  std::memset(out, 0, 136);
  store_u16(out, d16);
  uint16_t hi = 0;
  for (int b = 0; b < 8; ++b) {
    const int ls = L[b] + 32;
    hi = static_cast<uint16_t>(hi | (ls >> 4) << (2 * b));
    out[4 + b / 2] |= static_cast<uint8_t>((ls & 15) << (4 * (b % 2)));
    const float eff = d * static_cast<float>(L[b]);  // as the decoder forms it
    for (int i = 0; i < 32; ++i) {
      const int c = nearest_iq4_level(div0(x[32 * b + i], eff));
      out[8 + 16 * b + i % 16] |= static_cast<uint8_t>(c << (i < 16 ? 0 : 4));
    }
  }
  store_u16(out + 2, hi);
}

// IQ2_XXS: the grid as float columns, kGrid[k][g] = magnitude k of grid point g,
// and their squares (exact in float32).
struct Iq2Grid {
  alignas(64) float g[8][256];
  alignas(64) float gg[8][256];
  Iq2Grid() {
    for (int p = 0; p < 256; ++p)
      for (int k = 0; k < 8; ++k) {
        g[k][p] = static_cast<float>((qblocks::kIq2xxsGrid[p] >> (8 * k)) & 0xff);
        gg[k][p] = g[k][p] * g[k][p];
      }
  }
};
const Iq2Grid kGrid;

// The reference's 15 group-scale factors, np.linspace(0.7, 1.4, 15, dtype=float32):
// start + k*step in float64, the end point exact, each rounded to float32.
struct Linspace {
  float f[15];
  Linspace() {
    const double step = (1.4 - 0.7) / 14;
    for (int k = 0; k < 14; ++k) f[k] = static_cast<float>(k * step + 0.7);
    f[14] = 1.4f;
  }
};
const Linspace kGroupFactors;

// _iq2_xxs_rows for one super-block: 32 slots of 8 values, 4 slots per group of 32.
void iq2_xxs_block(const float* x, const float* imp, uint8_t* out, const IsaOps& ops) {
  float w[256], a[256], wa[256];
  element_weights(x, imp, w);
  uint32_t sign_bits[32];
  for (int j = 0; j < 32; ++j) {
    // an even count of minus signs per 8: when odd, the element that costs least
    // (smallest w*x^2; the first of equals) takes the wrong sign
    const float* b = x + 8 * j;
    const float* wj = w + 8 * j;
    int negs = 0, cheap = 0;
    for (int k = 0; k < 8; ++k) negs += b[k] < 0;
    float mn = (wj[0] * b[0]) * b[0];
    for (int k = 1; k < 8; ++k) {
      const float c = (wj[k] * b[k]) * b[k];
      if (!(c >= mn)) {  // numpy's argmin loop: a NaN wins and stops the search
        mn = c;
        cheap = k;
        if (std::isnan(c)) break;
      }
    }
    const bool odd = negs % 2 == 1;
    uint32_t bits = 0;
    for (int k = 0; k < 8; ++k) {
      const bool flip = odd && k == cheap;
      bits |= static_cast<uint32_t>((b[k] < 0) != flip) << k;
      a[8 * j + k] = flip ? -std::fabs(b[k]) : std::fabs(b[k]);
      wa[8 * j + k] = wj[k] * a[8 * j + k];
    }
    sign_bits[j] = bits & 0x7f;
  }
  alignas(64) float A[32][256], B[32][256];  // 64 KB of stack: thread_local costs a TLS lookup
  for (int j = 0; j < 32; ++j) ops.dots(wa + 8 * j, w + 8 * j, &kGrid.g[0][0], &kGrid.gg[0][0], A[j], B[j]);

  float best_t[8], best_b[8];
  for (int g = 0; g < 8; ++g) {
    float amax = 0.0f;
    for (int i = 0; i < 32; ++i) {
      const float v = std::fabs(a[32 * g + i]);
      amax = v > amax ? v : amax;
    }
    float hs[15];  // t/2 for each candidate t = amax / (43 f): 43 lands on 1/f of the largest value
    for (int c = 0; c < 15; ++c) hs[c] = div0(amax, 43.0f * kGroupFactors.f[c]) * 0.5f;
    int picks[4][15];
    for (int l = 0; l < 4; ++l) ops.pick(A[4 * g + l], B[4 * g + l], hs, 15, picks[l]);
    float best = -1.0f;
    best_t[g] = 0.0f;
    best_b[g] = 0.0f;
    for (int c = 0; c < 15; ++c) {
      float pa[4], pb[4];
      for (int l = 0; l < 4; ++l) {
        pa[l] = A[4 * g + l][picks[l][c]];
        pb[l] = B[4 * g + l][picks[l][c]];
      }
      const float sa = np_sum(pa, 4), sb = np_sum(pb, 4);
      const float score = div0(sa * sa, sb);
      if (sa > 0 && score > best) {
        best = score;
        best_t[g] = div0(sa, sb);
        best_b[g] = sb;
      }
    }
  }
  // 4-bit group scales t ~ d*(2s+1)/8; a group's error grows by (t - t')^2 * sum w G^2
  float tmax = best_t[0];
  for (int g = 1; g < 8; ++g) tmax = best_t[g] > tmax ? best_t[g] : tmax;
  float best_err = kInf;
  uint16_t best_d = 0;
  static constexpr double kFactors[5] = {0.9, 0.95, 1.0, 1.05, 1.1};
  float e[8];
  for (double f : kFactors) {
    const uint16_t d16 = f32_to_f16_bits(div0(tmax * static_cast<float>(8.0 / 31.0), static_cast<float>(f)));
    const float d = f16_to_f32(d16);
    for (int g = 0; g < 8; ++g) {
      const float s = rint_clip((div0(best_t[g] * 8.0f, d) - 1.0f) / 2.0f, 0.0f, 15.0f);
      const float r = best_t[g] - (d * (0.5f + s)) * 0.25f;
      e[g] = best_b[g] * (r * r);
    }
    const float err = np_sum(e, 8);
    if (err < best_err) {
      best_err = err;
      best_d = d16;
    }
  }
  const float d = f16_to_f32(best_d);
  store_u16(out, best_d);
  for (int g = 0; g < 8; ++g) {
    const float s = rint_clip((div0(best_t[g] * 8.0f, d) - 1.0f) / 2.0f, 0.0f, 15.0f);
    const float t_eff = (d * (0.5f + s)) * 0.25f;  // as the decoder forms it
    uint32_t word0 = 0, word1 = static_cast<uint32_t>(s) << 28;
    for (int l = 0; l < 4; ++l) {
      const int j = 4 * g + l;
      const float h = t_eff * 0.5f;
      int p;
      ops.pick(A[j], B[j], &h, 1, &p);
      word0 |= static_cast<uint32_t>(p) << (8 * l);
      word1 |= sign_bits[j] << (7 * l);
    }
    std::memcpy(out + 2 + 8 * g, &word0, 4);
    std::memcpy(out + 6 + 8 * g, &word1, 4);
  }
}

}  // namespace

void check_lowbit_args(GGMLType t, int64_t rows, int64_t cols, bool has_importance) {
  if (t != GGMLType::Q2_K && t != GGMLType::Q3_K && t != GGMLType::IQ2_XXS && t != GGMLType::IQ4_XS &&
      t != GGMLType::Q5_K && t != GGMLType::Q6_K)
    throw InputError(std::string("no importance-weighted quantizer for ") + type_name(t) +
                     " (Q2_K, Q3_K, IQ2_XXS, IQ4_XS, Q5_K, Q6_K)");
  if (rows < 0 || cols <= 0 || cols % 256 != 0)
    throw InputError("a row of " + std::to_string(cols) + " values is not a multiple of the " +
                     type_name(t) + " super-block of 256");
  if (t == GGMLType::IQ2_XXS && !has_importance)
    throw InputError("IQ2_XXS needs an importance matrix");
}

void quantize_lowbit(GGMLType t, const float* x, int64_t rows, int64_t cols,
                     const float* importance, int64_t importance_row_stride, uint8_t* out,
                     ThreadPool& pool) {
  check_lowbit_args(t, rows, cols, importance != nullptr);
  const IsaOps ops = isa_ops();
  const int64_t per_row = cols / 256, bytes = static_cast<int64_t>(traits(t).block_bytes);
  pool.parallel_for_balanced(rows * per_row, 1, [&](int64_t begin, int64_t end, int) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = i / per_row, c = (i % per_row) * 256;
      const float* xb = x + r * cols + c;
      const float* imp = importance ? importance + r * importance_row_stride + c : nullptr;
      uint8_t* ob = out + i * bytes;
      if (t == GGMLType::Q2_K) {
        q2_k_block(xb, imp, ob, ops);
      } else if (t == GGMLType::Q3_K) {
        q3_k_block(xb, imp, ob, ops);
      } else if (t == GGMLType::IQ4_XS) {
        iq4_xs_block(xb, imp, ob);
      } else if (t == GGMLType::Q6_K) {
        q6_k_block(xb, imp, ob, ops);
      } else if (t == GGMLType::Q5_K) {
        q5_k_block(xb, imp, ob, ops);
      } else {
        iq2_xxs_block(xb, imp, ob, ops);
      }
    }
  });
}

// The baseline (SSE2) grid loops, four grid points per vector.
namespace lowbit {

void grid_dots_sse2(const float* wa, const float* w, const float* g, const float* gg, float* A, float* B) {
  // four vectors of grid points at a time: eight independent add chains (one
  // chain of 8 dependent adds per vector would wait on the add latency)
  for (int p = 0; p < 256; p += 4 * 4) {
    __m128 a[4], b[4];
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) {
      a[u] = _mm_mul_ps(_mm_set1_ps(wa[0]), _mm_load_ps(g + p + 4 * u));
      b[u] = _mm_mul_ps(_mm_set1_ps(w[0]), _mm_load_ps(gg + p + 4 * u));
    }
    for (int k = 1; k < 8; ++k) {
      const __m128 wak = _mm_set1_ps(wa[k]), wk = _mm_set1_ps(w[k]);
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u) {
        a[u] = _mm_add_ps(a[u], _mm_mul_ps(wak, _mm_load_ps(g + 256 * k + p + 4 * u)));
        b[u] = _mm_add_ps(b[u], _mm_mul_ps(wk, _mm_load_ps(gg + 256 * k + p + 4 * u)));
      }
    }
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) {
      _mm_store_ps(A + p + 4 * u, a[u]);
      _mm_store_ps(B + p + 4 * u, b[u]);
    }
  }
}

void grid_pick_sse2(const float* A, const float* B, const float* h, int nh, int* out) {
  // per h: each lane keeps its largest value and the first index that had it;
  // the answer is the smallest such index among the lanes holding the maximum
  for (int i = 0; i < nh; ++i) {
    const __m128 hv = _mm_set1_ps(h[i]);
    __m128 mx = _mm_set1_ps(-kInf), nan = _mm_setzero_ps();
    __m128i best = _mm_setzero_si128(), idx = _mm_setr_epi32(0, 1, 2, 3);
    for (int p = 0; p < 256; p += 4) {
      const __m128 x = _mm_sub_ps(_mm_load_ps(A + p), _mm_mul_ps(_mm_load_ps(B + p), hv));
      const __m128 gt = _mm_cmpgt_ps(x, mx);
      mx = _mm_or_ps(_mm_and_ps(gt, x), _mm_andnot_ps(gt, mx));
      const __m128i g = _mm_castps_si128(gt);
      best = _mm_or_si128(_mm_and_si128(g, idx), _mm_andnot_si128(g, best));
      nan = _mm_or_ps(nan, _mm_cmpunord_ps(x, x));
      idx = _mm_add_epi32(idx, _mm_set1_epi32(4));
    }
    if (_mm_movemask_ps(nan)) {
      out[i] = first_nan(A, B, h[i]);
      continue;
    }
    alignas(16) float m[4];
    alignas(16) int32_t f[4];
    _mm_store_ps(m, mx);
    _mm_store_si128(reinterpret_cast<__m128i*>(f), best);
    out[i] = lanes_argmax(m, f, 4);
  }
}

namespace {
typedef float V4F __attribute__((vector_size(16)));
typedef int32_t V4I __attribute__((vector_size(16)));
}  // namespace

void fit_affine_sse2(const float* x, const float* w, int nmax, int sub, float* s, float* m) {
  lanes_fit_affine<V4F, V4I>(x, w, nmax, sub, s, m);
}

void fit_symmetric_sse2(const float* x, const float* w, int nmax, float* s) {
  lanes_fit_symmetric<V4F, V4I>(x, w, nmax, s);
}

int first_nan(const float* A, const float* B, float h) {
  for (int p = 0; p < 256; ++p)
    if (std::isnan(A[p] - B[p] * h)) return p;
  return 0;
}

int lanes_argmax(const float* m, const int32_t* first, int lanes) {
  float top = m[0];
  for (int l = 1; l < lanes; ++l) top = m[l] > top ? m[l] : top;
  int32_t p = 256;
  for (int l = 0; l < lanes; ++l)
    if (m[l] == top && first[l] < p) p = first[l];
  return p;
}

}  // namespace lowbit
}  // namespace pyv4
