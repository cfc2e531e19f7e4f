// The grouped GEMM entry points of a build without the Hopper kernels (no CUTLASS headers, or the GPU kernels
// left out where no GPU can run them). Everything that calls them (the fused MoE layer, its workspace layout,
// the TensorRT plugin) links and reports cudaErrorNotSupported at run time instead of failing to load.
#ifndef DWDP_WITH_CUTLASS

#include "dwdp/grouped_gemm.h"

namespace dwdp {

bool grouped_gemm_available() { return false; }

cudaError_t grouped_gemm_bf16_workspace_size(int, size_t* bytes) {
  if (bytes != nullptr) *bytes = 0;
  return cudaErrorNotSupported;
}

cudaError_t grouped_gemm_fp8_workspace_size(int, size_t* bytes) {
  if (bytes != nullptr) *bytes = 0;
  return cudaErrorNotSupported;
}

cudaError_t grouped_gemm_bf16(const void*, const int64_t*, int, const void*, int64_t, void*, int64_t, int64_t,
                              int64_t, int, void*, size_t, cudaStream_t) {
  return cudaErrorNotSupported;
}

cudaError_t grouped_gemm_fp8(const void*, const float*, const int64_t*, int, const void*, int64_t, const float*,
                             int64_t, void*, int64_t, int64_t, int64_t, int, void*, size_t, cudaStream_t) {
  return cudaErrorNotSupported;
}

}  // namespace dwdp

#endif  // DWDP_WITH_CUTLASS
