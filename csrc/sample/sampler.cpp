#include "sample/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <unordered_map>

#include "common/error.h"

namespace pyv4 {

void SamplingParams::validate() const {
  auto bad = [](const std::string& what) { throw InputError("invalid sampling parameter: " + what); };
  if (!(temperature >= 0.0f) || !std::isfinite(temperature)) bad("temperature must be >= 0");
  if (top_k < 0) bad("top_k must be >= 0 (0 disables it)");
  if (!(top_p > 0.0f && top_p <= 1.0f)) bad("top_p must be in (0, 1]");
  if (!(min_p >= 0.0f && min_p <= 1.0f)) bad("min_p must be in [0, 1]");
  if (!(repetition_penalty > 0.0f) || !std::isfinite(repetition_penalty)) bad("repetition_penalty must be > 0");
  if (!std::isfinite(presence_penalty)) bad("presence_penalty must be finite");
  if (!std::isfinite(frequency_penalty)) bad("frequency_penalty must be finite");
  if (penalty_last_n < 0) bad("penalty_last_n must be >= 0");
}

Sampler::Sampler(const SamplingParams& p) : p_(p), rng_(p.seed) { p_.validate(); }

std::vector<float> Sampler::probabilities(const float* logits, int64_t V, const int64_t* history,
                                          int64_t n_history) const {
  std::vector<float> z(logits, logits + V);
  // Penalties over the (last n) history.
  if (n_history > 0 && (p_.repetition_penalty != 1.0f || p_.presence_penalty != 0.0f ||
                        p_.frequency_penalty != 0.0f)) {
    const int64_t from = p_.penalty_last_n > 0 ? std::max<int64_t>(0, n_history - p_.penalty_last_n) : 0;
    std::unordered_map<int64_t, int64_t> count;
    for (int64_t i = from; i < n_history; ++i)
      if (history[i] >= 0 && history[i] < V) ++count[history[i]];
    for (const auto& [tok, c] : count) {
      float& l = z[tok];
      l = l > 0.0f ? l / p_.repetition_penalty : l * p_.repetition_penalty;
      l -= p_.presence_penalty + p_.frequency_penalty * static_cast<float>(c);
    }
  }
  std::vector<float> prob(V, 0.0f);
  if (p_.temperature == 0.0f) {
    prob[std::max_element(z.begin(), z.end()) - z.begin()] = 1.0f;  // first max = lowest id
    return prob;
  }
  // No filter (top_k 0, top_p 1, min_p 0, what OpenAI clients send by
  // default): a softmax over the whole vocabulary in id order. Sorting 129,280
  // logits only to keep all of them cost ~40 ms a token.
  if (p_.top_k == 0 && p_.top_p >= 1.0f && p_.min_p <= 0.0f) {
    const float mx = *std::max_element(z.begin(), z.end());
    std::vector<double> e(V);
    double sum = 0.0;
    for (int64_t i = 0; i < V; ++i) sum += (e[i] = std::exp((z[i] - mx) / p_.temperature));
    for (int64_t i = 0; i < V; ++i) prob[i] = static_cast<float>(e[i] / sum);
    return prob;
  }
  // Softmax at temperature over the candidates, sorted by logit (desc, then id).
  std::vector<int64_t> idx(V);
  std::iota(idx.begin(), idx.end(), 0);
  const int64_t k = p_.top_k > 0 ? std::min(p_.top_k, V) : V;
  auto by_logit = [&](int64_t a, int64_t b) { return z[a] > z[b] || (z[a] == z[b] && a < b); };
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), by_logit);
  idx.resize(k);
  const float mx = z[idx[0]];
  std::vector<double> e(k);
  double sum = 0.0;
  for (int64_t i = 0; i < k; ++i) sum += (e[i] = std::exp((z[idx[i]] - mx) / p_.temperature));
  for (double& x : e) x /= sum;
  // top-p: the smallest prefix whose mass reaches top_p (at least one token).
  int64_t keep = k;
  if (p_.top_p < 1.0f) {
    double cum = 0.0;
    for (int64_t i = 0; i < k; ++i) {
      cum += e[i];
      if (cum >= p_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  // min-p: drop tokens below min_p times the most likely one.
  if (p_.min_p > 0.0f) {
    const double floor = p_.min_p * e[0];
    int64_t j = 1;
    while (j < keep && e[j] >= floor) ++j;
    keep = j;
  }
  double kept = 0.0;
  for (int64_t i = 0; i < keep; ++i) kept += e[i];
  for (int64_t i = 0; i < keep; ++i) prob[idx[i]] = static_cast<float>(e[i] / kept);
  return prob;
}

int64_t Sampler::sample(const float* logits, int64_t V, const int64_t* history, int64_t n_history) {
  const std::vector<float> prob = probabilities(logits, V, history, n_history);
  if (p_.temperature == 0.0f) return std::max_element(prob.begin(), prob.end()) - prob.begin();
  // Inverse-CDF draw with a 53-bit uniform: identical across platforms for a seed.
  const double u = static_cast<double>(rng_() >> 11) * (1.0 / 9007199254740992.0);
  double cum = 0.0;
  int64_t last = -1;
  for (int64_t i = 0; i < V; ++i) {
    if (prob[i] <= 0.0f) continue;
    cum += prob[i];
    last = i;
    if (u < cum) return i;
  }
  return last;  // rounding left u above the total mass
}

}  // namespace pyv4
