// pybind11 registration of the grouped GEMMs and the FP8 quantizers: raw device pointers in,
// validation in cpp/src.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "dwdp/grouped_gemm.h"

namespace py = pybind11;

namespace {

void check_gg(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
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
      [](uintptr_t h, uintptr_t q, uintptr_t scales, int64_t rows, int64_t inter, bool up_first, uintptr_t stream,
         uintptr_t limit) {
        check_gg(dwdp::swiglu_quantize_fp8(reinterpret_cast<const void*>(h), reinterpret_cast<void*>(q),
                                           reinterpret_cast<float*>(scales), rows, inter, up_first,
                                           reinterpret_cast<cudaStream_t>(stream),
                                           reinterpret_cast<const int64_t*>(limit)),
                 "swiglu_quantize_fp8");
      },
      py::arg("h"), py::arg("q"), py::arg("scales"), py::arg("m"), py::arg("inter"), py::arg("up_first"),
      py::arg("stream"), py::arg("limit") = 0,
      "h [m, 2*inter] bf16 (gate, up) -> silu(gate)*up quantized: q [m, inter] e4m3, scales [m, inter/128]; "
      "limit: a device int64 row count (0: every row)");
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
      [](uintptr_t a, uintptr_t group_row_ends, int num_groups, uintptr_t b, int64_t b_expert_stride, uintptr_t d,
         int64_t rows, int64_t n, int64_t k, int tile, uintptr_t workspace, size_t workspace_bytes, uintptr_t stream) {
        check_gg(dwdp::grouped_gemm_bf16(reinterpret_cast<const void*>(a),
                                         reinterpret_cast<const int64_t*>(group_row_ends), num_groups,
                                         reinterpret_cast<const void*>(b), b_expert_stride, reinterpret_cast<void*>(d),
                                         rows, n, k, tile, reinterpret_cast<void*>(workspace), workspace_bytes,
                                         reinterpret_cast<cudaStream_t>(stream)),
                 "grouped_gemm_bf16");
      },
      py::arg("a"), py::arg("group_row_ends"), py::arg("num_groups"), py::arg("b"), py::arg("b_expert_stride"),
      py::arg("d"), py::arg("m"), py::arg("n"), py::arg("k"), py::arg("tile"), py::arg("workspace"),
      py::arg("workspace_bytes"), py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
      "D[r0:r1] = A[r0:r1] @ B_g^T per group g, one launch (raw device pointers; bf16, fp32 accumulate).\n"
      "a: [m, k]; group_row_ends: int64 [G] cumulative rows; b: [G, n, k], experts b_expert_stride elements\n"
      "apart; d: [m, n]; tile: GroupedGemmTile.");
  m.def(
      "grouped_gemm_fp8",
      [](uintptr_t a, uintptr_t a_scales, uintptr_t group_row_ends, int num_groups, uintptr_t b,
         int64_t b_expert_stride, uintptr_t b_scales, int64_t b_scale_expert_stride, uintptr_t d, int64_t rows,
         int64_t n, int64_t k, int tile, uintptr_t workspace, size_t workspace_bytes, uintptr_t stream) {
        check_gg(dwdp::grouped_gemm_fp8(reinterpret_cast<const void*>(a), reinterpret_cast<const float*>(a_scales),
                                        reinterpret_cast<const int64_t*>(group_row_ends), num_groups,
                                        reinterpret_cast<const void*>(b), b_expert_stride,
                                        reinterpret_cast<const float*>(b_scales), b_scale_expert_stride,
                                        reinterpret_cast<void*>(d), rows, n, k, tile,
                                        reinterpret_cast<void*>(workspace), workspace_bytes,
                                        reinterpret_cast<cudaStream_t>(stream)),
                 "grouped_gemm_fp8");
      },
      py::arg("a"), py::arg("a_scales"), py::arg("group_row_ends"), py::arg("num_groups"), py::arg("b"),
      py::arg("b_expert_stride"), py::arg("b_scales"), py::arg("b_scale_expert_stride"), py::arg("d"), py::arg("m"),
      py::arg("n"), py::arg("k"), py::arg("tile"), py::arg("workspace"), py::arg("workspace_bytes"),
      py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
      "Block-scaled FP8 grouped GEMM (DeepSeek-V3 scales): a [m, k] e4m3 with a_scales [m, k/128] fp32;\n"
      "b [G, n, k] e4m3 with b_scales [G, n/128, k/128] fp32 (expert strides in elements); d [m, n] bf16.");
#endif
}
