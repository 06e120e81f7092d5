// Per-op wall-time accounting for one Engine (PYV4_PROFILE=1): the forward pass
// wraps each op in a PROF_SCOPE(kind); times add up per kind until reset.
// Scopes are leaves (none nests inside another), so the kinds partition the
// profiled time. When profiling is off a scope costs one pointer test.
// Single-threaded use: scopes open on the thread that runs Engine::eval.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace pyv4 {

class Profiler {
 public:
  struct Entry {
    std::string kind;
    double seconds = 0.0;
    int64_t calls = 0;
  };

  // PYV4_PROFILE set to anything but "" or "0".
  static bool enabled_by_env();

  void add(const char* kind, double seconds);
  const std::vector<Entry>& entries() const { return entries_; }  // first-seen order
  void add_eval(double seconds) { total_ += seconds, ++evals_; }    // whole eval calls
  double total_seconds() const { return total_; }
  int64_t evals() const { return evals_; }
  void reset() { entries_.clear(), total_ = 0.0, evals_ = 0; }

  // The profiler scopes on this thread report to (nullptr: profiling off).
  static Profiler*& current();

 private:
  std::vector<Entry> entries_;  // few kinds: a linear scan beats a map
  double total_ = 0.0;
  int64_t evals_ = 0;
};

class ProfScope {
 public:
  explicit ProfScope(const char* kind) : p_(Profiler::current()), kind_(kind) {
    if (p_) t0_ = std::chrono::steady_clock::now();
  }
  ~ProfScope() { stop(); }
  // Ends the scope early (idempotent).
  void stop() {
    if (p_) p_->add(kind_, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count());
    p_ = nullptr;
  }
  ProfScope(const ProfScope&) = delete;
  ProfScope& operator=(const ProfScope&) = delete;

 private:
  Profiler* p_;
  const char* kind_;
  std::chrono::steady_clock::time_point t0_;
};

// Installs a profiler as current() for the enclosing scope (nullptr: none).
class ProfActivate {
 public:
  explicit ProfActivate(Profiler* p) : prev_(Profiler::current()) { Profiler::current() = p; }
  ~ProfActivate() { Profiler::current() = prev_; }
  ProfActivate(const ProfActivate&) = delete;
  ProfActivate& operator=(const ProfActivate&) = delete;

 private:
  Profiler* prev_;
};

#define PYV4_PROF_CAT2(a, b) a##b
#define PYV4_PROF_CAT(a, b) PYV4_PROF_CAT2(a, b)
#define PROF_SCOPE(kind) ::pyv4::ProfScope PYV4_PROF_CAT(prof_scope_, __LINE__)(kind)

}  // namespace pyv4
