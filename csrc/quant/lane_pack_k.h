// The lane-GEMM packers of Q5_K and Q6_K (the K types of llama-quantize's
// ladders): a part of gemm_lane_avx512.cpp (its only includer), kept apart for
// size, included inside that file's anonymous namespace after the helpers it
// uses (Form, store_codes, pair8, pair8_f16, lane_block, Q4kNibbles,
// store_q4k_scales) and compiled with its AVX-512 flags. Contract of a packer
// there: two super-blocks at p -> out[0..512) codes in the lane layout (lane j:
// 32-block j % 8 of super-block j / 8), dw at 512, Min's mw at 576, HalfScale's
// mins at 576 / 640 and dw1 at 704. Block layouts: quant/blocks.h; the math:
// quant/kernels.h.
#pragma once

// Q5_K: Q4_K's nibbles and scales (Form::Min: dw = d sc, mw = dmin m per
// 32-block, cs = dx sum q) with the fifth bit of element 4k + m of block j at
// bit j of qh byte 4k + m: code = nibble | bit << 4 (0..31).
struct PackQ5_K {
  static constexpr int kBB = 176, kBlocks = 2;
  static constexpr Form kForm = Form::Min;
  static constexpr GGMLType kType = GGMLType::Q5_K;
  static inline void group(const uint8_t* p, uint8_t* out) {
    const uint8_t* p1 = p + kBB;
    const Q4kNibbles q(p + 48, p1 + 48);
    // qh dword k of each super-block (32 bytes at +16) to its 8 lanes
    const __m512i H = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16))),
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p1 + 16)), 1);
    const __m512i hbase = pair8(0, 8);
    for (int k = 0; k < 8; ++k) {
      const __m512i hb = _mm512_and_si512(
          _mm512_srlv_epi32(_mm512_permutexvar_epi32(_mm512_add_epi32(hbase, _mm512_set1_epi32(k)), H),
                            lane_block()),
          _mm512_set1_epi8(1));
      store_codes(out, k, _mm512_or_si512(q.at(k), _mm512_slli_epi32(hb, 4)));
    }
    store_q4k_scales(p, p1, out);
  }
};

// Q6_K: code = 6-bit q (0..63); block b = 4n + jq of a super-block takes the
// nibble jq / 2 of ql dword 16n + 8 (jq % 2) + k and the bits 2 jq of qh dword
// 8n + k for its elements 4k..4k+3. Its int8 sub-block scales do not fit a code
// byte: dw0 / dw1 = d sc of the block's halves (Form::HalfScale), the offset
// -32 d sc per sub-block through hs (in hs order: the 16 sub-blocks of each
// super-block).
struct PackQ6_K {
  static constexpr int kBB = 210, kBlocks = 2;
  static constexpr Form kForm = Form::HalfScale;
  static constexpr GGMLType kType = GGMLType::Q6_K;
  static inline void group(const uint8_t* p, uint8_t* out) {
    const uint8_t* p1 = p + kBB;
    const __m512i L0 = _mm512_loadu_si512(p), L1 = _mm512_loadu_si512(p + 64);
    const __m512i M0 = _mm512_loadu_si512(p1), M1 = _mm512_loadu_si512(p1 + 64);
    const __m512i Hq = _mm512_loadu_si512(p + 128), Hq1 = _mm512_loadu_si512(p1 + 128);
    const __m512i lbase = _mm512_setr_epi32(0, 8, 0, 8, 16, 24, 16, 24, 0, 8, 0, 8, 16, 24, 16, 24);
    const __m512i lsh = _mm512_setr_epi32(0, 0, 4, 4, 0, 0, 4, 4, 0, 0, 4, 4, 0, 0, 4, 4);
    const __m512i hbase = _mm512_setr_epi32(0, 0, 0, 0, 8, 8, 8, 8, 16, 16, 16, 16, 24, 24, 24, 24);
    const __m512i hsh = _mm512_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6, 0, 2, 4, 6, 0, 2, 4, 6);
    for (int k = 0; k < 8; ++k) {
      const __m512i li = _mm512_add_epi32(lbase, _mm512_set1_epi32(k));
      const __m512i lo = _mm512_mask_blend_epi32(0xFF00, _mm512_permutex2var_epi32(L0, li, L1),
                                                 _mm512_permutex2var_epi32(M0, li, M1));
      const __m512i hi = _mm512_permutex2var_epi32(Hq, _mm512_add_epi32(hbase, _mm512_set1_epi32(k)), Hq1);
      const __m512i c = _mm512_or_si512(
          _mm512_and_si512(_mm512_srlv_epi32(lo, lsh), _mm512_set1_epi8(15)),
          _mm512_slli_epi32(_mm512_and_si512(_mm512_srlv_epi32(hi, hsh), _mm512_set1_epi8(3)), 4));
      store_codes(out, k, c);
    }
    // dword j of the sign-extended scale words: scales 2 (j % 8), + 1 of super-block j / 8
    const __m256i s8 = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 192))),
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(p1 + 192)), 1);
    const __m512i w = _mm512_cvtepi8_epi16(s8);
    const __m512 d = pair8_f16(p + 208, p1 + 208);
    _mm512_storeu_ps(out + 512, _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(w, 16), 16))));
    _mm512_storeu_ps(out + 704, _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_srai_epi32(w, 16))));
    for (int h = 0; h < 2; ++h) {
      const __m512 sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
          reinterpret_cast<const __m128i*>((h ? p1 : p) + 192))));
      const float dh = _cvtsh_ss(load_u16((h ? p1 : p) + 208));
      _mm512_storeu_ps(out + 576 + 64 * h, _mm512_mul_ps(_mm512_set1_ps(-32.0f * dh), sc));
    }
  }
};
