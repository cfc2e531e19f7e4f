// pybind11 registration only: validation and CUDA calls live in cpp/src.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "dwdp/copy_plan.h"

namespace py = pybind11;

namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

dwdp::CopyPlan make_plan(const std::vector<std::tuple<uintptr_t, uint64_t, uint64_t>>& slices) {
  std::vector<dwdp::CopySlice> v;
  v.reserve(slices.size());
  for (const auto& [src, dst, n] : slices) v.push_back({src, dst, n});
  return dwdp::CopyPlan(std::move(v));
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "tensorrt_llm_dwdp C++/CUDA core";
  py::class_<dwdp::CopyPlan>(m, "CopyPlan")
      .def(py::init(&make_plan), py::arg("slices"), "slices: (source address, slot offset, nbytes) triples")
      .def(
          "issue",
          [](const dwdp::CopyPlan& p, uintptr_t dst_base, uintptr_t stream) {
            check(p.issue(reinterpret_cast<void*>(dst_base), reinterpret_cast<cudaStream_t>(stream)),
                  "CopyPlan.issue");
          },
          py::arg("dst_base"), py::arg("stream"), py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("nbytes", &dwdp::CopyPlan::nbytes)
      .def("__len__", &dwdp::CopyPlan::size);
  m.def("cuda_runtime_version", [] {
    int v = 0;
    check(cudaRuntimeGetVersion(&v), "cudaRuntimeGetVersion");
    return v;
  });
}
