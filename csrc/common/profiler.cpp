#include "common/profiler.h"

#include <cstdlib>
#include <cstring>

namespace pyv4 {

bool Profiler::enabled_by_env() {
  const char* e = std::getenv("PYV4_PROFILE");
  return e && *e && std::strcmp(e, "0") != 0;
}

void Profiler::add(const char* kind, double seconds) {
  for (Entry& e : entries_) {
    if (e.kind == kind) {
      e.seconds += seconds;
      ++e.calls;
      return;
    }
  }
  entries_.push_back({kind, seconds, 1});
}

Profiler*& Profiler::current() {
  thread_local Profiler* p = nullptr;
  return p;
}

}  // namespace pyv4
