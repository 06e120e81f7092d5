// The lane-GEMM packers of the i-quants IQ2_XXS, IQ3_XXS, IQ2_XS, IQ1_S, IQ1_M,
// IQ3_S, IQ2_S: a part of gemm_lane_avx512.cpp (its only includer), kept apart
// for size. It is included inside that file's anonymous namespace, after the
// packing helpers it uses (Form, store_codes, pair8_f16, lane_block; with_parity,
// iq_signed and gather16 of quant/simd_avx512.h; contract of a packer there: 16 blocks
// of 32, two super-blocks, at p -> out[0..512) codes in the lane layout, dw at
// 512, HalfMin's mins at 576, HalfScale's dw1 at 704), and compiled with its
// AVX-512 flags.
// Block layouts: quant/blocks.h; the math of each type: quant/kernels.h; the
// grid tables are included by gemm_lane_avx512.cpp.
#pragma once

// IQ2_XXS / IQ3_XXS sign words B (4 x 7 sign bits per dword, quant/blocks.h):
// the signs of field i of each dword in its byte i.
inline __m512i iq_sign_bytes(__m512i B) {
  const __m512i f7 = _mm512_set1_epi32(127);
  __m512i S = _mm512_and_si512(B, f7);
  for (int i = 1; i < 4; ++i)
    S = _mm512_or_si512(S, _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(B, 7 * i), f7), 8 * i));
  return with_parity(S);
}
// dw = d * (0.5 + (B >> 28)) * mul of the 16 lanes (B: their sign words), to out + 512.
inline void store_iq_scales(const uint8_t* p, const uint8_t* p1, __m512i B, float mul, uint8_t* out) {
  const __m512 sc = _mm512_cvtepi32_ps(_mm512_srli_epi32(B, 28));
  _mm512_storeu_ps(out + 512, _mm512_mul_ps(_mm512_mul_ps(pair8_f16(p, p1), _mm512_add_ps(_mm512_set1_ps(0.5f), sc)),
                                            _mm512_set1_ps(mul)));
}
// The byte mask of elements 4h..4h+3 of sign field i (sign bytes S of iq_sign_bytes).
inline __mmask64 iq_neg(__m512i S, int i, int h) {
  const __m512i bytes0 = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12));
  const __m512i s = _mm512_shuffle_epi8(S, _mm512_add_epi8(bytes0, _mm512_set1_epi8(static_cast<char>(i))));
  return _mm512_test_epi8_mask(s, _mm512_set1_epi32(static_cast<int>(h ? 0x80402010u : 0x08040201u)));
}
// Dwords 2j (h = 0) or 2j + 1 of the qwords g0 (lanes 0..7) and g1 (lanes 8..15).
inline __m512i qword_half(__m512i g0, __m512i g1, int h) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  return _mm512_permutex2var_epi32(g0, h ? _mm512_add_epi32(even, _mm512_set1_epi32(1)) : even, g1);
}
// 32 bytes at p (lanes 0..7) and p1 (lanes 8..15).
inline __m512i pair256(const uint8_t* p, const uint8_t* p1) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))),
                            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p1)), 1);
}
// 8 uint16 at p (lanes 0..7) and p1 (lanes 8..15), zero-extended.
inline __m512i pair_u16(const uint8_t* p, const uint8_t* p1) {
  return _mm512_cvtepu16_epi32(_mm256_inserti128_si256(
      _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))),
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(p1)), 1));
}

// IQ2_XXS: 8 groups of 32 per super-block (quant/blocks.h); u = signed grid
// value + 43 (0..86), dw = d * (0.5 + s) * 0.25, offset k = 43. Grid entry i
// of a block (elements 8i..8i+7) fills dwords 2i, 2i + 1: one 8-entry gather
// per super-block and i, the dwords split by permutes; the 8 sign bits of
// entry i (7-bit field | parity << 7) become two byte masks.
struct PackIQ2_XXS {
  static constexpr int kBB = 66, kBlocks = 2;
  static constexpr Form kForm = Form::Offset;
  static constexpr GGMLType kType = GGMLType::IQ2_XXS;
  static inline void group(const uint8_t* p, uint8_t* out) {
    const uint8_t* p1 = p + kBB;
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    // dwords (a, b) of block l at 2l, 2l + 1 of each super-block's qs
    const __m512i Q0 = _mm512_loadu_si512(p + 2), Q1 = _mm512_loadu_si512(p1 + 2);
    const __m512i A = _mm512_permutex2var_epi32(Q0, even, Q1);  // grid indices, byte i = entry i
    const __m512i B = _mm512_permutex2var_epi32(Q0, odd, Q1);   // 4 x 7 sign bits, scale
    const __m512i S = iq_sign_bytes(B);
    for (int i = 0; i < 4; ++i) {
      __m512i g0, g1;
      gather16(kIq2xxsGrid, _mm512_and_si512(_mm512_srli_epi32(A, 8 * i), _mm512_set1_epi32(255)), &g0, &g1);
      for (int h = 0; h < 2; ++h) store_codes(out, 2 * i + h, iq_signed(qword_half(g0, g1, h), iq_neg(S, i, h), 43));
    }
    store_iq_scales(p, p1, B, 0.25f, out);
  }
};
// IQ2_XXS where the CPU has VBMI + GFNI: the same codes and dw, decoded by the GEMV's
// byte permutes (gemv_iq2xxs_avx512.cpp) instead of 32 grid gathers.
struct PackIQ2_XXS_Vbmi {
  static constexpr int kBB = 66, kBlocks = 2;
  static constexpr Form kForm = Form::Offset;
  static constexpr GGMLType kType = GGMLType::IQ2_XXS;
  static inline void group(const uint8_t* p, uint8_t* out) { pack_iq2xxs_lane_avx512(p, out); }
};
// IQ3_XXS: as IQ2_XXS with 4-element grid entries (entry k of a block is its
// dword k) and their signs in a sign word per block; u = signed grid value + 64
// (2..126), dw = d * (0.5 + s) * 0.5, offset k = 64. The magnitudes by gathers,
// or (kVbmi, where the CPU has VBMI + BITALG) by the GEMV's table lookups (Zen 4,
// [2048x4096], 2 threads, Gops/s: 16 tokens 237-279 -> 407-415, 96: 447-505 -> 569-571).
template <bool kVbmi>
struct PackIQ3_XXS_T {
  static constexpr int kBB = 98, kBlocks = 2;
  static constexpr Form kForm = Form::Offset;
  static constexpr GGMLType kType = GGMLType::IQ3_XXS;
  static inline void group(const uint8_t* p, uint8_t* out) {
    const uint8_t* p1 = p + kBB;
    const __m512i B = pair256(p + 66, p1 + 66);  // sign words
    const __m512i S = iq_sign_bytes(B);
    // the magnitudes of lane vector k: 64 bytes at mags + 64 k
    alignas(64) uint8_t mags[512];
    if constexpr (kVbmi) {
      iq3xxs_lane_magnitudes_avx512(p, mags);
    } else {
      // block b's 8 index bytes are qs dwords 2b (entries 0..3), 2b + 1 (4..7)
      const __m512i Q0 = _mm512_loadu_si512(p + 2), Q1 = _mm512_loadu_si512(p1 + 2);
      const int* grid = reinterpret_cast<const int*>(kIq3xxsGrid);
      for (int k = 0; k < 8; ++k) {
        const __m512i I = _mm512_srli_epi32(qword_half(Q0, Q1, k / 4), 8 * (k % 4));
        _mm512_store_si512(mags + 64 * k, _mm512_i32gather_epi32(_mm512_and_si512(I, _mm512_set1_epi32(255)), grid, 4));
      }
    }
    for (int k = 0; k < 8; ++k)  // field k / 2, elements 4 (k % 2) .. + 3 of it
      store_codes(out, k, iq_signed(_mm512_load_si512(mags + 64 * k), iq_neg(S, k / 2, k % 2), 64));
    store_iq_scales(p, p1, B, 0.5f, out);
  }
};
using PackIQ3_XXS = PackIQ3_XXS_T<false>;
using PackIQ3_XXS_Vbmi = PackIQ3_XXS_T<true>;
// 8 bytes at p (lanes 0..7) and p1 (lanes 8..15), zero-extended.
inline __m512i pair_u8(const uint8_t* p, const uint8_t* p1) {
  return _mm512_cvtepu8_epi32(_mm_unpacklo_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)),
                                                 _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p1))));
}
// Form::HalfScale's floats of IQ2_XS / IQ2_S from the 8 scale bytes at p + off, p1 + off
// (block b's byte: low nibble its first half, high its second): dw0 / dw1 = d a / 8,
// a = 2 * nibble + 1, and the offsets -43 d a / 8 per sub-block in ActQ::hs order.
inline void store_half_scales(const uint8_t* p, const uint8_t* p1, int off, uint8_t* out) {
  const __m512i sc = pair_u8(p + off, p1 + off);  // lane j: scale byte j % 8
  const __m512 d8 = _mm512_mul_ps(pair8_f16(p, p1), _mm512_set1_ps(0.125f));
  auto odd = [](__m512i nib) {
    return _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_slli_epi32(nib, 1), _mm512_set1_epi32(1)));
  };
  const __m512 a0 = odd(_mm512_and_si512(sc, _mm512_set1_epi32(15))), a1 = odd(_mm512_srli_epi32(sc, 4));
  _mm512_storeu_ps(out + 512, _mm512_mul_ps(d8, a0));
  _mm512_storeu_ps(out + 704, _mm512_mul_ps(d8, a1));
  // sub-blocks 2b (a0 of lane b), 2b + 1 (a1) per super-block
  const __m512 m0 = _mm512_mul_ps(_mm512_mul_ps(d8, _mm512_set1_ps(-43.0f)), a0);
  const __m512 m1 = _mm512_mul_ps(_mm512_mul_ps(d8, _mm512_set1_ps(-43.0f)), a1);
  const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  _mm512_storeu_ps(out + 576, _mm512_permutex2var_ps(m0, lo, m1));
  _mm512_storeu_ps(out + 640, _mm512_permutex2var_ps(m0, _mm512_add_epi32(lo, _mm512_set1_epi32(8)), m1));
}

// IQ2_XS: index word l of a block (u16 4 (j % 8) + l of its super-block's qs: 9-bit
// grid index, 7-bit sign index) fills dwords 2l, 2l + 1; u = signed grid value + 43
// (0..86), the sub-block scales a = 2 * nibble + 1 (up to 31) too large to fold into
// a code byte: dw0 / dw1 = d a / 8 of the block's halves (Form::HalfScale), the
// offset -43 d a / 8 per sub-block through hs.
struct PackIQ2_XS {
  static constexpr int kBB = 74, kBlocks = 2;
  static constexpr Form kForm = Form::HalfScale;
  static constexpr GGMLType kType = GGMLType::IQ2_XS;
  static inline void group(const uint8_t* p, uint8_t* out) {
    const uint8_t* p1 = p + kBB;
    const __m512i Q0 = _mm512_loadu_si512(p + 2), Q1 = _mm512_loadu_si512(p1 + 2);
    for (int h2 = 0; h2 < 2; ++h2) {  // words 2 h2, 2 h2 + 1 of each block: one dword
      const __m512i W = qword_half(Q0, Q1, h2);
      for (int m = 0; m < 2; ++m) {
        const int l = 2 * h2 + m;
        const __m512i w = _mm512_and_si512(_mm512_srli_epi32(W, 16 * m), _mm512_set1_epi32(0xFFFF));
        const __m512i S = with_parity(_mm512_srli_epi32(w, 9));  // the signs in byte 0
        __m512i g0, g1;
        gather16(kIq2xsGrid, _mm512_and_si512(w, _mm512_set1_epi32(511)), &g0, &g1);
        for (int h = 0; h < 2; ++h) store_codes(out, 2 * l + h, iq_signed(qword_half(g0, g1, h), iq_neg(S, 0, h), 43));
      }
    }
    store_half_scales(p, p1, 66, out);
  }
};
// IQ2_S: as IQ2_XS, entry l of a block (elements 8l..8l+7) with the grid index
// qs byte 4 (j % 8) + l | ((qh[j % 8] >> 2l) & 3) << 8 and the sign byte 32 bytes on.
struct PackIQ2_S {
  static constexpr int kBB = 82, kBlocks = 2;
  static constexpr Form kForm = Form::HalfScale;
  static constexpr GGMLType kType = GGMLType::IQ2_S;
  static inline void group(const uint8_t* p, uint8_t* out) {
    const uint8_t* p1 = p + kBB;
    const __m512i Q = pair256(p + 2, p1 + 2), SG = pair256(p + 34, p1 + 34), H = pair_u8(p + 66, p1 + 66);
    for (int l = 0; l < 4; ++l) {
      const __m512i idx = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(Q, 8 * l), _mm512_set1_epi32(255)),
                                          _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(H, 2 * l), _mm512_set1_epi32(3)), 8));
      __m512i g0, g1;
      gather16(kIq2sGrid, idx, &g0, &g1);
      for (int h = 0; h < 2; ++h) store_codes(out, 2 * l + h, iq_signed(qword_half(g0, g1, h), iq_neg(SG, l, h), 43));
    }
    store_half_scales(p, p1, 74, out);
  }
};
// IQ3_S: as IQ3_XXS (entry k of a block is its dword k), the 9th index bit of
// entry k bit k of the block's qh byte, its signs bits 4k..4k+3 of the block's
// sign dword; u = signed grid value + 16 (1..31), dw = d * (2s + 1), offset k = 16.
// (The GEMV's lookup from registers, kernels_lowbit_avx512.cpp, two entries of the
// 16 blocks at a time, measured no faster here: 1 thread, ns per super-block at
// 4 / 8 tokens 38.9-41.8 / 45.3-49.5 against these gathers' 39.1-39.7 / 46.0-46.5.)
struct PackIQ3_S {
  static constexpr int kBB = 110, kBlocks = 2;
  static constexpr Form kForm = Form::Offset;
  static constexpr GGMLType kType = GGMLType::IQ3_S;
  static inline void group(const uint8_t* p, uint8_t* out) {
    const uint8_t* p1 = p + kBB;
    const __m512i S = pair256(p + 74, p1 + 74), H = pair_u8(p + 66, p1 + 66);
    const __m512i Q0 = _mm512_loadu_si512(p + 2), Q1 = _mm512_loadu_si512(p1 + 2);
    const int* grid = reinterpret_cast<const int*>(kIq3sGrid);
    for (int h = 0; h < 2; ++h) {
      const __m512i I = qword_half(Q0, Q1, h);
      for (int m = 0; m < 4; ++m) {
        const int k = 4 * h + m;
        const __m512i idx = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(I, 8 * m), _mm512_set1_epi32(255)),
                                            _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(H, k), _mm512_set1_epi32(1)), 8));
        store_codes(out, k, iq_signed(_mm512_i32gather_epi32(idx, grid, 4), iq_neg(S, k / 2, k % 2), 16));
      }
    }
    // lane j: nibble j % 8 of its super-block's 4 scale bytes
    uint32_t s0, s1;
    std::memcpy(&s0, p + 106, 4);
    std::memcpy(&s1, p1 + 106, 4);
    const __m512i sc = _mm512_mask_blend_epi32(0xFF00, _mm512_set1_epi32(static_cast<int>(s0)), _mm512_set1_epi32(static_cast<int>(s1)));
    const __m512i nib = _mm512_and_si512(_mm512_srlv_epi32(sc, _mm512_slli_epi32(lane_block(), 2)), _mm512_set1_epi32(15));
    const __m512 odd = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_slli_epi32(nib, 1), _mm512_set1_epi32(1)));
    _mm512_storeu_ps(out + 512, _mm512_mul_ps(pair8_f16(p, p1), odd));
  }
};
// IQ1_S: grid entry l of a block (its low index byte = byte l of qs dword b, the
// high bits 3l of qh[b]) fills dwords 2l, 2l + 1; u = 8 (grid + 1) + 2 (delta > 0)
// (0..18), dw = d * (2s + 1) / 8, offset k = 9.
struct PackIQ1_S {
  static constexpr int kBB = 50, kBlocks = 2;
  static constexpr Form kForm = Form::Offset;
  static constexpr GGMLType kType = GGMLType::IQ1_S;
  static inline void group(const uint8_t* p, uint8_t* out) {
    const uint8_t* p1 = p + kBB;
    const __m512i Q = pair256(p + 2, p1 + 2), H = pair_u16(p + 34, p1 + 34);
    const __m512i up = _mm512_maskz_mov_epi32(_mm512_testn_epi32_mask(H, _mm512_set1_epi32(0x8000)),
                                              _mm512_set1_epi8(2));
    const __m512i m7 = _mm512_set1_epi32(7);
    for (int l = 0; l < 4; ++l) {
      const __m512i idx = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(Q, 8 * l), _mm512_set1_epi32(255)),
                                          _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(H, 3 * l), m7), 8));
      __m512i g0, g1;
      gather16(kIq1sGrid, idx, &g0, &g1);
      for (int h = 0; h < 2; ++h)
        store_codes(out, 2 * l + h, _mm512_add_epi8(_mm512_slli_epi32(qword_half(g0, g1, h), 3), up));
    }
    const __m512 s = _mm512_cvtepi32_ps(
        _mm512_add_epi32(_mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(H, 12), m7), 1), _mm512_set1_epi32(1)));
    _mm512_storeu_ps(out + 512, _mm512_mul_ps(_mm512_mul_ps(pair8_f16(p, p1), s), _mm512_set1_ps(0.125f)));
  }
};
// IQ1_M: entries as IQ1_S (high bits and delta sign in nibble l % 2 of qh byte
// 2b + l / 2); entries 0, 1 of a block are its sub-block 2b, 2, 3 sub-block
// 2b + 1. u = a * c with a = 2s + 1 <= 15 and c = 4 (grid + 1) + (delta > 0)
// <= 9, so u <= 135 (exact per byte in the 16-bit multiply, as Q2_K's);
// dw = d / 4, and the offset -9/8 d a per sub-block goes through hs (Form::HalfMin).
struct PackIQ1_M {
  static constexpr int kBB = 56, kBlocks = 2;
  static constexpr Form kForm = Form::HalfMin;
  static constexpr GGMLType kType = GGMLType::IQ1_M;
  static inline void group(const uint8_t* p, uint8_t* out) {
    const uint8_t* p1 = p + kBB;
    const BlockIQ1_M* blk[2] = {reinterpret_cast<const BlockIQ1_M*>(p), reinterpret_cast<const BlockIQ1_M*>(p1)};
    alignas(64) int32_t a[2][16];  // a[half][lane]: scale of sub-block 2 (lane % 8) + half, both words
    float d[2];
    for (int sb = 0; sb < 2; ++sb) {
      d[sb] = _cvtsh_ss(iq1m_d(*blk[sb]));
      alignas(64) float mn[16];
      for (int s = 0; s < 16; ++s) {
        const int v = 2 * iq1m_scale(*blk[sb], s) + 1;
        a[s % 2][8 * sb + s / 2] = v | (v << 16);
        mn[s] = -1.125f * d[sb] * static_cast<float>(v);
      }
      std::memcpy(out + 576 + 64 * sb, mn, 64);
    }
    const __m512i Q = pair256(p, p1), H = pair_u16(p + 32, p1 + 32);
    for (int l = 0; l < 4; ++l) {
      const __m512i nib = _mm512_and_si512(_mm512_srli_epi32(H, 4 * l), _mm512_set1_epi32(15));
      const __m512i idx = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(Q, 8 * l), _mm512_set1_epi32(255)),
                                          _mm512_slli_epi32(_mm512_and_si512(nib, _mm512_set1_epi32(7)), 8));
      const __m512i up = _mm512_maskz_mov_epi32(_mm512_testn_epi32_mask(nib, _mm512_set1_epi32(8)),
                                                _mm512_set1_epi8(1));
      const __m512i A = _mm512_load_si512(a[l / 2]);
      __m512i g0, g1;
      gather16(kIq1sGrid, idx, &g0, &g1);
      for (int h = 0; h < 2; ++h) {
        const __m512i c = _mm512_add_epi8(_mm512_slli_epi32(qword_half(g0, g1, h), 2), up);
        store_codes(out, 2 * l + h, _mm512_mullo_epi16(c, A));
      }
    }
    _mm512_storeu_ps(out + 512, _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(0.25f * d[0]), _mm512_set1_ps(0.25f * d[1])));
  }
};

