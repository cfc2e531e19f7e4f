// pybind11 registration only: validation and CUDA calls live in cpp/src.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "dwdp/copy_plan.h"
#include "dwdp/moe_permute.h"

namespace py = pybind11;

void register_grouped_gemm(pybind11::module_& m);  // cpp/bindings/grouped_gemm.cpp
void register_context_bindings(pybind11::module_& m);  // cpp/bindings/context.cpp

namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

std::unique_ptr<dwdp::CopyPlan> make_plan(const std::vector<std::tuple<uintptr_t, uint64_t, uint64_t>>& slices) {
  std::vector<dwdp::CopySlice> v;
  v.reserve(slices.size());
  for (const auto& [src, dst, n] : slices) v.push_back({src, dst, n});
  return std::make_unique<dwdp::CopyPlan>(std::move(v));
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "tensorrt_llm_dwdp C++/CUDA core";
  py::class_<dwdp::CopyPlan>(m, "CopyPlan")
      .def(py::init(&make_plan), py::arg("slices"), "slices: (source address, slot offset, nbytes) triples")
      .def(
          "issue",
          [](const dwdp::CopyPlan& p, uintptr_t dst_base, uintptr_t stream, bool batched) {
            check(p.issue(reinterpret_cast<void*>(dst_base), reinterpret_cast<cudaStream_t>(stream), batched),
                  "CopyPlan.issue");
          },
          py::arg("dst_base"), py::arg("stream"), py::arg("batched") = true, py::call_guard<py::gil_scoped_release>())
      .def(
          "capture",
          [](dwdp::CopyPlan& p, uintptr_t dst_base) {
            check(p.capture(reinterpret_cast<void*>(dst_base)), "CopyPlan.capture");
          },
          py::arg("dst_base"), "capture the per-slice pull into this slot as a CUDA graph (once per slot)")
      .def(
          "launch",
          [](const dwdp::CopyPlan& p, uintptr_t dst_base, uintptr_t stream) {
            check(p.launch(reinterpret_cast<void*>(dst_base), reinterpret_cast<cudaStream_t>(stream)),
                  "CopyPlan.launch");
          },
          py::arg("dst_base"), py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
          "issue the captured pull for this slot with one cudaGraphLaunch")
      .def_static("batch_supported", &dwdp::CopyPlan::batch_supported)
      .def_property_readonly("nbytes", &dwdp::CopyPlan::nbytes)
      .def("__len__", &dwdp::CopyPlan::size);
  m.def(
      "permute_rows_bf16",
      [](uintptr_t x, uintptr_t src, uintptr_t dest, int64_t n, int64_t hidden, uintptr_t out, uintptr_t stream,
         uintptr_t limit, int64_t x_row_stride) {
        check(dwdp::permute_rows_bf16(reinterpret_cast<const void*>(x), reinterpret_cast<const int64_t*>(src),
                                      reinterpret_cast<const int64_t*>(dest), n, hidden, reinterpret_cast<void*>(out),
                                      reinterpret_cast<cudaStream_t>(stream), reinterpret_cast<const int64_t*>(limit),
                                      x_row_stride),
              "permute_rows_bf16");
      },
      py::arg("x"), py::arg("src"), py::arg("dest"), py::arg("n"), py::arg("hidden"), py::arg("out"),
      py::arg("stream"), py::arg("limit") = 0, py::arg("x_row_stride") = 0,
      "out[dest[i]] = x[src[i]] for i < min(n, *limit) (raw device pointers, bf16 rows of `hidden`; limit 0: n; "
      "x_row_stride 0: hidden)");
  m.def(
      "combine_bf16",
      [](uintptr_t y, uintptr_t row, uintptr_t weight, int64_t tokens, int64_t k_top, int64_t hidden, uintptr_t out,
         uintptr_t stream) {
        check(dwdp::combine_bf16(reinterpret_cast<const void*>(y), reinterpret_cast<const int64_t*>(row),
                                 reinterpret_cast<const float*>(weight), tokens, k_top, hidden,
                                 reinterpret_cast<void*>(out), reinterpret_cast<cudaStream_t>(stream)),
              "combine_bf16");
      },
      "weighted top-k sum of expert output rows, row < 0 skipped (raw device pointers)");
  m.def(
      "swiglu_bf16",
      [](uintptr_t h, uintptr_t act, int64_t rows, int64_t inter, bool up_first, uintptr_t stream, uintptr_t limit) {
        check(dwdp::swiglu_bf16(reinterpret_cast<const void*>(h), reinterpret_cast<void*>(act), rows, inter, up_first,
                                reinterpret_cast<cudaStream_t>(stream), reinterpret_cast<const int64_t*>(limit)),
              "swiglu_bf16");
      },
      py::arg("h"), py::arg("act"), py::arg("rows"), py::arg("inter"), py::arg("up_first"), py::arg("stream"),
      py::arg("limit") = 0,
      "act [m, inter] = silu(gate) * up from h [m, 2*inter] for rows < min(m, *limit) (raw device pointers, bf16; "
      "limit 0: m)");
  register_grouped_gemm(m);
  register_context_bindings(m);
  m.def("cuda_runtime_version", [] {
    int v = 0;
    check(cudaRuntimeGetVersion(&v), "cudaRuntimeGetVersion");
    return v;
  });
}
