// Error types that cross the C++/Python boundary.
//
// Everything a user can get wrong (a corrupt file, a token id out of range, a
// context overflow) is reported by throwing one of these; the bindings map them
// to Python exceptions. The core never aborts on user input.
#pragma once

#include <stdexcept>
#include <string>

namespace pyv4 {

// A file (GGUF, session) is malformed or does not describe a model we can run.
// Python: pyv4.FormatError (a ValueError).
struct FormatError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A call's arguments are invalid (token id out of range, bad parameter).
// Python: ValueError.
struct InputError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// The session would grow past the model's context length. Python:
// pyv4.ContextOverflowError (a ValueError).
struct ContextOverflowError : std::length_error {
  using std::length_error::length_error;
};

}  // namespace pyv4
