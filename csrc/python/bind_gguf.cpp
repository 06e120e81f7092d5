// GGUF metadata access for Python (pyv4 info, the tokenizer loader).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>

#include "gguf/gguf_file.h"
#include "python/bindings.h"

namespace py = pybind11;

namespace pyv4 {

static py::object value_to_py(const GGUFValue& v) {
  if (v.is_array()) {
    if (v.elem == GGUFType::STRING) return py::cast(v.as);
    if (v.elem == GGUFType::FLOAT32 || v.elem == GGUFType::FLOAT64) return py::cast(v.af);
    if (v.elem == GGUFType::BOOL) {
      py::list l;
      for (int64_t x : v.ai) l.append(py::bool_(x != 0));
      return l;
    }
    return py::cast(v.ai);
  }
  switch (v.type) {
    case GGUFType::STRING: return py::str(v.s);
    case GGUFType::BOOL: return py::bool_(v.i != 0);
    case GGUFType::FLOAT32:
    case GGUFType::FLOAT64: return py::float_(v.f);
    default: return py::int_(v.i);
  }
}

void bind_gguf(py::module_& m) {
  py::class_<GGUFFile, std::shared_ptr<GGUFFile>>(m, "GGUFFile",
                                                  "Read-only, validated view of a GGUF model (one file or all shards of a split one)")
      .def(py::init<const std::string&>(), py::arg("path"))
      .def_property_readonly("path", &GGUFFile::path)
      .def_property_readonly("version", &GGUFFile::version)
      .def_property_readonly("file_size", &GGUFFile::file_size)
      .def_property_readonly("shards", &GGUFFile::shard_paths,
                             "paths of the files the model was read from (one unless split)")
      .def_property_readonly("fingerprint", &GGUFFile::fingerprint)
      .def("keys",
           [](const GGUFFile& f) {
             std::vector<std::string> k;
             for (const auto& kv : f.metadata()) k.push_back(kv.first);
             return k;
           })
      .def(
          "get",
          [](const GGUFFile& f, const std::string& key, py::object dflt) -> py::object {
            const GGUFValue* v = f.find(key);
            return v ? value_to_py(*v) : dflt;
          },
          py::arg("key"), py::arg("default") = py::none())
      .def("tensors", [](const GGUFFile& f) {
        // [(name, type name, torch-order shape, nbytes)]
        py::list out;
        for (const GGUFTensor& t : f.tensors()) {
          std::vector<int64_t> shape(t.ne.rbegin(), t.ne.rend());
          out.append(py::make_tuple(t.name, type_name(t.type), shape, t.nbytes));
        }
        return out;
      });
}

}  // namespace pyv4
