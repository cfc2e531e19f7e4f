// FP8 (e4m3) grouped GEMM with DeepSeek-V3 block scales (1x128 activations, 128x128 weights) for Hopper:
// CUTLASS's ptr-array blockwise-scaled mainloop, one launch over one [G, n, k] expert stack; weights and their
// scales are read in place. Built only with CUTLASS headers.
#ifdef DWDP_WITH_CUTLASS

#include "grouped_gemm_sm90.cuh"

namespace dwdp {
namespace {

using namespace dwdp::sm90;
using Element = cutlass::float_e4m3_t;

// NOTE: a 128-wide N tile matches the 128-column weight scale block, so each tile applies one B scale per
// K block. The 1x2 cluster multicasts A across neighbouring N tiles of the same expert. (2x1 and 1x1
// clusters measured within run-to-run noise of it on the H100; BENCHMARKS.md.)
using Large = Config<Element, true, Shape<_128, _128, _128>, Shape<_1, _2, _1>,
                     cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperativeFP8Blockwise,
                     cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative>;
using Small = Config<Element, true, Shape<_64, _128, _128>, Shape<_1, _2, _1>,
                     cutlass::gemm::KernelPtrArrayTmaWarpSpecializedPingpongFP8Blockwise,
                     cutlass::epilogue::PtrArrayTmaWarpSpecializedPingpong>;

}  // namespace

cudaError_t grouped_gemm_fp8_workspace_size(int num_groups, size_t* bytes) {
  if (num_groups < 0 || bytes == nullptr) return cudaErrorInvalidValue;
  cudaError_t err = cudaSuccess;
  const int sms = sm_count_of_current_device(&err);
  if (err != cudaSuccess) return err;
  const size_t a = workspace_bytes<Large, Element>(num_groups, sms), b = workspace_bytes<Small, Element>(num_groups, sms);
  *bytes = a > b ? a : b;
  return cudaSuccess;
}

cudaError_t grouped_gemm_fp8(const void* a, const float* a_scales, const int64_t* group_row_ends, int num_groups,
                             const void* b, int64_t b_expert_stride, const float* b_scales,
                             int64_t b_scale_expert_stride, void* d, int64_t m, int64_t n, int64_t k, int tile,
                             void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (a_scales == nullptr || num_groups < 0) return cudaErrorInvalidValue;
  if (num_groups == 0) return cudaSuccess;
  Experts<Element> experts;
  cudaError_t err = make_experts(b, b_expert_stride, b_scales, b_scale_expert_stride, n, k, true, &experts);
  if (err != cudaSuccess) return err;
  if ((err = check_common(a, d, workspace, group_row_ends, m, n, k, kScaleBlock)) != cudaSuccess) return err;
  auto* pa = static_cast<const Element*>(a);
  auto* pd = static_cast<OutElement*>(d);
  const int ni = static_cast<int>(n), ki = static_cast<int>(k);
  switch (pick_tile(tile, m, num_groups)) {
    case kTileLarge:
      return run<Large, Element>(pa, a_scales, group_row_ends, num_groups, experts, pd, ni, ki, workspace,
                                 workspace_bytes, stream);
    case kTileSmall:
      return run<Small, Element>(pa, a_scales, group_row_ends, num_groups, experts, pd, ni, ki, workspace,
                                 workspace_bytes, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace dwdp

#endif  // DWDP_WITH_CUTLASS
