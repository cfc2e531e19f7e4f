// pybind11 registration of the split-weight grouped GEMMs and the FP8 quantizers: raw device pointers in,
// validation in cpp/src.
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

std::vector<const void*> as_ptrs(const std::vector<uintptr_t>& v) {
  std::vector<const void*> out;
  for (uintptr_t p : v) out.push_back(reinterpret_cast<const void*>(p));
  return out;
}

int total_groups(const std::vector<uintptr_t>& segments, const std::vector<int>& segment_groups, const char* what) {
  if (segments.size() != segment_groups.size())
    throw std::invalid_argument(std::string(what) + ": b_segments and segment_groups differ in length");
  return std::accumulate(segment_groups.begin(), segment_groups.end(), 0);
}

}  // namespace

void register_grouped_gemm(py::module_& m) {
  m.def(
      "quantize_fp8_rows",
      [](uintptr_t x, uintptr_t q, uintptr_t scales, int64_t rows, int64_t k, uintptr_t stream) {
        check_gg(dwdp::quantize_fp8_rows(reinterpret_cast<const void*>(x), reinterpret_cast<void*>(q),
                                         reinterpret_cast<float*>(scales), rows, k,
                                         reinterpret_cast<cudaStream_t>(stream)),
                 "quantize_fp8_rows");
      },
      py::arg("x"), py::arg("q"), py::arg("scales"), py::arg("m"), py::arg("k"), py::arg("stream"),
      "x [m, k] bf16 -> q [m, k] e4m3, scales [m, k/128] fp32 (1x128 groups)");
  m.def(
      "swiglu_quantize_fp8",
      [](uintptr_t h, uintptr_t q, uintptr_t scales, int64_t rows, int64_t inter, uintptr_t stream) {
        check_gg(dwdp::swiglu_quantize_fp8(reinterpret_cast<const void*>(h), reinterpret_cast<void*>(q),
                                           reinterpret_cast<float*>(scales), rows, inter,
                                           reinterpret_cast<cudaStream_t>(stream)),
                 "swiglu_quantize_fp8");
      },
      py::arg("h"), py::arg("q"), py::arg("scales"), py::arg("m"), py::arg("inter"), py::arg("stream"),
      "h [m, 2*inter] bf16 (gate, up) -> silu(gate)*up quantized: q [m, inter] e4m3, scales [m, inter/128]");
#ifdef DWDP_WITH_CUTLASS
  m.def(
      "grouped_gemm_workspace_size",
      [](int num_groups, bool fp8) {
        size_t bytes = 0;
        check_gg(fp8 ? dwdp::grouped_gemm_fp8_workspace_size(num_groups, &bytes)
                     : dwdp::grouped_gemm_bf16_workspace_size(num_groups, &bytes),
                 "grouped_gemm_workspace_size");
        return bytes;
      },
      py::arg("num_groups"), py::arg("fp8"), "workspace bytes a grouped GEMM needs for num_groups on this device");
  m.def(
      "grouped_gemm_bf16",
      [](uintptr_t a, uintptr_t group_row_ends, const std::vector<uintptr_t>& b_segments,
         const std::vector<int>& segment_groups, uintptr_t d, int64_t rows, int64_t n, int64_t k, int tile,
         uintptr_t workspace, size_t workspace_bytes, uintptr_t stream) {
        const int groups = total_groups(b_segments, segment_groups, "grouped_gemm_bf16");
        const auto bases = as_ptrs(b_segments);
        check_gg(dwdp::grouped_gemm_bf16(reinterpret_cast<const void*>(a),
                                         reinterpret_cast<const int64_t*>(group_row_ends), groups, bases.data(),
                                         segment_groups.data(), static_cast<int>(bases.size()),
                                         reinterpret_cast<void*>(d), rows, n, k, tile,
                                         reinterpret_cast<void*>(workspace), workspace_bytes,
                                         reinterpret_cast<cudaStream_t>(stream)),
                 "grouped_gemm_bf16");
      },
      py::arg("a"), py::arg("group_row_ends"), py::arg("b_segments"), py::arg("segment_groups"), py::arg("d"),
      py::arg("m"), py::arg("n"), py::arg("k"), py::arg("tile"), py::arg("workspace"), py::arg("workspace_bytes"),
      py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
      "D[r0:r1] = A[r0:r1] @ B_g^T per group g, one launch (raw device pointers; bf16, fp32 accumulate).\n"
      "a: [m, k]; group_row_ends: int64 [G] cumulative rows; b_segments: per segment an [E_s, n, k] stack;\n"
      "segment_groups: groups taken from each segment, in order (G = sum); d: [m, n]; tile: GroupedGemmTile.");
  m.def(
      "grouped_gemm_fp8",
      [](uintptr_t a, uintptr_t a_scales, uintptr_t group_row_ends, const std::vector<uintptr_t>& b_segments,
         const std::vector<uintptr_t>& b_scale_segments, const std::vector<int>& segment_groups, uintptr_t d,
         int64_t rows, int64_t n, int64_t k, int tile, uintptr_t workspace, size_t workspace_bytes,
         uintptr_t stream) {
        const int groups = total_groups(b_segments, segment_groups, "grouped_gemm_fp8");
        if (b_scale_segments.size() != b_segments.size())
          throw std::invalid_argument("grouped_gemm_fp8: b_scale_segments and b_segments differ in length");
        const auto bases = as_ptrs(b_segments), scales = as_ptrs(b_scale_segments);
        check_gg(dwdp::grouped_gemm_fp8(reinterpret_cast<const void*>(a), reinterpret_cast<const float*>(a_scales),
                                        reinterpret_cast<const int64_t*>(group_row_ends), groups, bases.data(),
                                        scales.data(), segment_groups.data(), static_cast<int>(bases.size()),
                                        reinterpret_cast<void*>(d), rows, n, k, tile,
                                        reinterpret_cast<void*>(workspace), workspace_bytes,
                                        reinterpret_cast<cudaStream_t>(stream)),
                 "grouped_gemm_fp8");
      },
      py::arg("a"), py::arg("a_scales"), py::arg("group_row_ends"), py::arg("b_segments"),
      py::arg("b_scale_segments"), py::arg("segment_groups"), py::arg("d"), py::arg("m"), py::arg("n"), py::arg("k"),
      py::arg("tile"), py::arg("workspace"), py::arg("workspace_bytes"), py::arg("stream"),
      py::call_guard<py::gil_scoped_release>(),
      "Block-scaled FP8 grouped GEMM (DeepSeek-V3 scales): a [m, k] e4m3 with a_scales [m, k/128] fp32;\n"
      "b_segments [E_s, n, k] e4m3 with b_scale_segments [E_s, n/128, k/128] fp32; d [m, n] bf16.");
#endif
}
