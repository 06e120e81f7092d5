// Token sampling over a logits vector: penalties, temperature, top-k, top-p,
// min-p, then a draw from a seeded generator (same seed → same tokens).
// Temperature 0 is greedy (argmax after penalties, lowest id on ties).
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace pyv4 {

struct SamplingParams {
  float temperature = 1.0f;
  int64_t top_k = 0;            // 0: off
  float top_p = 1.0f;           // 1: off
  float min_p = 0.0f;           // 0: off
  float repetition_penalty = 1.0f;  // CTRL-style: divide positive, multiply negative logits
  float presence_penalty = 0.0f;    // OpenAI-style: minus once per seen token
  float frequency_penalty = 0.0f;   // minus per occurrence
  int64_t penalty_last_n = 0;       // 0: whole history
  uint64_t seed = 0;

  void validate() const;  // throws InputError naming the bad field
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p);

  // The probability of every token after penalties and filters (zeros outside
  // the kept support); for temperature 0 a one-hot vector.
  std::vector<float> probabilities(const float* logits, int64_t n_vocab, const int64_t* history,
                                   int64_t n_history) const;
  // Draws one token id.
  int64_t sample(const float* logits, int64_t n_vocab, const int64_t* history, int64_t n_history);

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
};

}  // namespace pyv4
