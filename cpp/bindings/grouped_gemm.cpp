// pybind11 registration of the split-weight grouped GEMM: raw device pointers in, validation in cpp/src.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "dwdp/grouped_gemm.h"

namespace py = pybind11;

namespace {

void check_gg(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

}  // namespace

void register_grouped_gemm(py::module_& m) {
#ifdef DWDP_WITH_CUTLASS
  m.def(
      "grouped_gemm_bf16_workspace_size",
      [](int num_groups) {
        size_t bytes = 0;
        check_gg(dwdp::grouped_gemm_bf16_workspace_size(num_groups, &bytes), "grouped_gemm_bf16_workspace_size");
        return bytes;
      },
      py::arg("num_groups"), "workspace bytes grouped_gemm_bf16 needs for num_groups groups on the current device");
  m.def(
      "grouped_gemm_bf16",
      [](uintptr_t a, uintptr_t group_row_ends, const std::vector<uintptr_t>& b_segments,
         const std::vector<int>& segment_groups, uintptr_t d, int64_t n, int64_t k, uintptr_t workspace,
         size_t workspace_bytes, uintptr_t stream) {
        if (b_segments.size() != segment_groups.size())
          throw std::invalid_argument("grouped_gemm_bf16: b_segments and segment_groups differ in length");
        std::vector<const void*> bases;
        for (uintptr_t p : b_segments) bases.push_back(reinterpret_cast<const void*>(p));
        const int num_groups = std::accumulate(segment_groups.begin(), segment_groups.end(), 0);
        check_gg(dwdp::grouped_gemm_bf16(reinterpret_cast<const void*>(a),
                                         reinterpret_cast<const int64_t*>(group_row_ends), num_groups, bases.data(),
                                         segment_groups.data(), static_cast<int>(bases.size()),
                                         reinterpret_cast<void*>(d), n, k, reinterpret_cast<void*>(workspace),
                                         workspace_bytes, reinterpret_cast<cudaStream_t>(stream)),
                 "grouped_gemm_bf16");
      },
      py::arg("a"), py::arg("group_row_ends"), py::arg("b_segments"), py::arg("segment_groups"), py::arg("d"),
      py::arg("n"), py::arg("k"), py::arg("workspace"), py::arg("workspace_bytes"), py::arg("stream"),
      py::call_guard<py::gil_scoped_release>(),
      "D[r0:r1] = A[r0:r1] @ B_g^T per group g, one launch (raw device pointers; bf16, fp32 accumulate).\n"
      "a: [M, K]; group_row_ends: int64 [G] cumulative rows; b_segments: per segment an [E_s, N, K] stack;\n"
      "segment_groups: groups taken from each segment, in order (G = sum); d: [M, N].");
#else
  (void)m;
#endif
}
