// The row x token tiling loops shared by the per-ISA kernel files: rows in
// tiles of R (then single rows), tokens in tiles of up to 4; f(R, T, r, t0)
// gets R and T as std::integral_constant so each tile shape is its own
// instantiation. Anonymous namespace: every including file (each compiled
// for its own ISA) keeps its own copy (see docs/ARCHITECTURE.md, ISA dispatch).
#pragma once

#include <cstdint>
#include <type_traits>

namespace pyv4 {
namespace qk {
namespace {

template <int N>
using IC = std::integral_constant<int, N>;

template <int R, class F>
void drive(int64_t r0, int64_t r1, int64_t n_tokens, F&& f) {
  auto tokens = [&](auto RR, int64_t r) {
    for (int64_t t = 0; t < n_tokens; t += 4) {
      switch (n_tokens - t >= 4 ? 4 : n_tokens - t) {
        case 4: f(RR, IC<4>{}, r, t); break;
        case 3: f(RR, IC<3>{}, r, t); break;
        case 2: f(RR, IC<2>{}, r, t); break;
        default: f(RR, IC<1>{}, r, t); break;
      }
    }
  };
  int64_t r = r0;
  for (; r + R <= r1; r += R) tokens(IC<R>{}, r);
  for (; r < r1; ++r) tokens(IC<1>{}, r);
}

// Decode (1..3 tokens): one row after the other, so each thread streams one
// contiguous range; more tokens: tiles of R rows.
template <int R, class F>
void drive_rows(int64_t r0, int64_t r1, int64_t n_tokens, F&& f) {
  if (n_tokens < 4)
    drive<1>(r0, r1, n_tokens, f);
  else
    drive<R>(r0, r1, n_tokens, f);
}

// The GEMVs (a row at a time): f(T, r, t0) for every row and group of up to 3
// tokens t0..t0+T-1, T as an integral_constant. A row's groups run back to back,
// so after the first the row is decoded from L1 rather than read again.
template <class F>
void gemv_rows_by_tokens(int64_t r0, int64_t r1, int64_t n_tokens, F&& f) {
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t t = 0; t < n_tokens; t += 3) {
      if (n_tokens - t == 1)
        f(IC<1>{}, r, t);
      else if (n_tokens - t == 2)
        f(IC<2>{}, r, t);
      else
        f(IC<3>{}, r, t);
    }
}

}  // namespace
}  // namespace qk
}  // namespace pyv4
