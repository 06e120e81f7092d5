// Small AVX2 helpers shared by the AVX2 kernel files (include only from *_avx2.cpp:
// anonymous namespace, so each file keeps its own copy; see tile_drive.h).
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace pyv4 {
namespace qk {
namespace {

// Decode GEMVs stream each row once from DRAM, one contiguous range per thread.
// A software prefetch into L2 (T1) kDecodePrefetch bytes ahead keeps more lines
// in flight than the hardware prefetcher does: the BF16 head on Zen 4 1.35-1.46x
// (gemm_float_avx2.cpp). Zen 1, 2 threads, weights from DRAM, builds interleaved:
// the Q8_0 GEMV at the model's shapes rose from 0.52-0.71 of the read bandwidth
// (per-run medians of three runs) to 0.58-0.86, Q4_K from 0.41-0.50 to 0.43-0.53
// (4, 8 and 16 KB ahead within each other's noise). The 2-bit types' tiles
// (kernels_lowbit_avx2.cpp) do not prefetch: bound by their decode here, they
// gained nothing from DRAM (q2 experts' step 16.0 / 15.9 ms) and lost 5-8 % on
// cache-resident rows.
constexpr int64_t kDecodePrefetch = 8192;

// Prefetches the kBytes at p, kDecodePrefetch ahead. Called once per kBytes
// of a row: with steps of at most 64 bytes between the lines it touches, no
// line of the stream is skipped.
template <int64_t kBytes>
inline void prefetch_ahead(const uint8_t* p) {
#pragma GCC unroll 8
  for (int64_t l = 0; l < kBytes; l += 64)
    _mm_prefetch(reinterpret_cast<const char*>(p + kDecodePrefetch + l), _MM_HINT_T1);
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Independent accumulator sets per output of a tile of T tokens: a GEMV's one
// dependent FMA chain per output would bound it by the FMA latency (4 cycles
// per 32-block), so tiles of 1 or 2 tokens spread their sums over kSets sets.
// The count depends on the tokens only, never on the rows of the tile: how the
// threads split the rows (and so which rows share a tile) does not change any
// output's order of sums.
template <int T>
constexpr int kSets = T == 1 ? 4 : T == 2 ? 2 : 1;

template <int S, int R, int T>
inline void init_sums(__m256 (&acc)[S][R][T]) {
  for (int s = 0; s < S; ++s)
    for (int i = 0; i < R; ++i)
      for (int t = 0; t < T; ++t) acc[s][i][t] = _mm256_setzero_ps();
}

template <int S, int R, int T>
inline void store_sums(__m256 (&acc)[S][R][T], float* Y, int64_t ldy, int64_t r, int64_t t0) {
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) {
      __m256 v = acc[0][i][t];
      for (int s = 1; s < S; ++s) v = _mm256_add_ps(v, acc[s][i][t]);
      Y[(t0 + t) * ldy + r + i] = hsum(v);
    }
}

}  // namespace
}  // namespace qk
}  // namespace pyv4
