#include "python/bindings.h"
namespace pyv4 {
void bind_model(pybind11::module_& m) { (void)m; }
}  // namespace pyv4
