// GGML block layouts (little-endian, packed) and the scalar helpers shared by
// the reference decoder and the SIMD kernels. Layouts follow GGML's
// ggml-common.h (facts only; the code here is our own).
#pragma once

#include <cstdint>
#include <cstring>

// The scalar helpers below are also called by the CUDA kernels (csrc/cuda/),
// compiled by nvcc for host and device; elsewhere the macro is empty.
#ifdef __CUDACC__
#define PYV4_HD __host__ __device__
#else
#define PYV4_HD
#endif

namespace pyv4 {
namespace qblocks {

// Every helper here has internal linkage (static): this header is included by
// files compiled with AVX2 / AVX-512 flags and by baseline files, and an inline
// function with external linkage would be merged by the linker into one copy,
// possibly the AVX-512 one, which then runs on a machine without AVX-512.

constexpr int kQK = 32;    // elements per Q8_0 / Q4_0 / MXFP4 block
constexpr int kQK_K = 256; // elements per Q4_K super-block

#pragma pack(push, 1)
// Q8_0: value[i] = d * qs[i]
struct BlockQ8_0 {
  uint16_t d;  // f16
  int8_t qs[32];
};
// Q4_0: value[j] = d * ((qs[j] & 15) - 8), value[j + 16] = d * ((qs[j] >> 4) - 8)
struct BlockQ4_0 {
  uint16_t d;  // f16
  uint8_t qs[16];
};
// MXFP4: value[j] = kMxfp4x2[qs[j] & 15] * e8m0_half(e), value[j+16] uses qs[j] >> 4.
// (GGML stores the E2M1 values doubled as int8 and halves the E8M0 scale.)
struct BlockMXFP4 {
  uint8_t e;  // E8M0 exponent
  uint8_t qs[16];
};
// Q4_K super-block of 256: 8 sub-blocks of 32 with 6-bit scale sc[i] and min
// m[i] packed in `scales`. For chunk c = 0..3 (64 elements), byte qs[32c + l]
// holds element 64c + l in its low nibble (sub-block 2c) and element 64c+32+l in
// its high nibble (sub-block 2c+1); value = d*sc[i]*q - dmin*m[i].
struct BlockQ4_K {
  uint16_t d;     // f16 super-block scale for the scales
  uint16_t dmin;  // f16 super-block scale for the mins
  uint8_t scales[12];
  uint8_t qs[128];
};
#pragma pack(pop)

static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block");
static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block");
static_assert(sizeof(BlockMXFP4) == 17, "MXFP4 block");
static_assert(sizeof(BlockQ4_K) == 144, "Q4_K block");

// E2M1 values times two (so they are small integers): the OCP MXFP4 table
// [0, .5, 1, 1.5, 2, 3, 4, 6, -0, ...] * 2.
constexpr int8_t kMxfp4x2[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

static inline PYV4_HD float bits_to_f32(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

static inline PYV4_HD uint32_t f32_to_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return bits;
}

// Exact IEEE half -> float (handles subnormals, inf, NaN).
static inline PYV4_HD float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3ff;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000 | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  return bits_to_f32(bits);
}

static inline PYV4_HD float bf16_to_f32(uint16_t h) { return bits_to_f32(static_cast<uint32_t>(h) << 16); }

// 2^(e - 128) = half of the E8M0 scale 2^(e - 127), as GGML's
// ggml_e8m0_to_fp32_half: e < 2 gives the subnormals 2^-128 and 2^-127.
static inline PYV4_HD float e8m0_to_f32_half(uint8_t e) {
  const uint32_t bits = e < 2 ? (0x00200000u << e) : (static_cast<uint32_t>(e) - 1u) << 23;
  return bits_to_f32(bits);
}

static inline PYV4_HD uint16_t load_u16(const void* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K super-block.
static inline PYV4_HD void q4k_scale_min(const uint8_t* q, int j, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// All 8 scales (byte j of *sc) and mins (byte j of *m) of a Q4_K super-block at
// once, with 32-bit mask arithmetic (same values as q4k_scale_min).
static inline PYV4_HD void q4k_scales_mins(const uint8_t* q, uint64_t* sc, uint64_t* m) {
  uint32_t a, b, c;
  std::memcpy(&a, q, 4);
  std::memcpy(&b, q + 4, 4);
  std::memcpy(&c, q + 8, 4);
  const uint32_t sc_lo = a & 0x3F3F3F3Fu, m_lo = b & 0x3F3F3F3Fu;
  const uint32_t sc_hi = (c & 0x0F0F0F0Fu) | ((a >> 2) & 0x30303030u);
  const uint32_t m_hi = ((c >> 4) & 0x0F0F0F0Fu) | ((b >> 2) & 0x30303030u);
  *sc = sc_lo | (static_cast<uint64_t>(sc_hi) << 32);
  *m = m_lo | (static_cast<uint64_t>(m_hi) << 32);
}

}  // namespace qblocks
}  // namespace pyv4
