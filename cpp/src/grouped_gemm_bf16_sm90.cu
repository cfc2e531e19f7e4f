// BF16 grouped GEMM for Hopper over one [G, n, k] expert stack (a composite view or an ordinary tensor): one
// CUTLASS ptr-array launch. Built only with CUTLASS headers (setup.py defines DWDP_WITH_CUTLASS); otherwise empty.
#ifdef DWDP_WITH_CUTLASS

#include "grouped_gemm_sm90.cuh"

namespace dwdp {
namespace {

using namespace dwdp::sm90;
using Element = cutlass::bfloat16_t;

// NOTE: the large tile and 2x1 cluster are the shape torch's own grouped GEMM picks for large problems on
// Hopper; the ping-pong 64-row tile keeps tensor cores busy when experts get few rows.
using Large = Config<Element, false, Shape<_128, _256, _64>, Shape<_2, _1, _1>,
                     cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative,
                     cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative>;
using Small = Config<Element, false, Shape<_64, _128, _128>, Shape<_2, _1, _1>,
                     cutlass::gemm::KernelPtrArrayTmaWarpSpecializedPingpong,
                     cutlass::epilogue::PtrArrayTmaWarpSpecializedPingpong>;
using Legacy = Config<Element, false, Shape<_128, _128, _64>, Shape<_1, _1, _1>,
                      cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative,
                      cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative>;

}  // namespace

bool grouped_gemm_available() { return true; }

cudaError_t grouped_gemm_bf16_workspace_size(int num_groups, size_t* bytes) {
  if (num_groups < 0 || bytes == nullptr) return cudaErrorInvalidValue;
  cudaError_t err = cudaSuccess;
  const int sms = sm_count_of_current_device(&err);
  if (err != cudaSuccess) return err;
  size_t a = workspace_bytes<Large, Element>(num_groups, sms), b = workspace_bytes<Small, Element>(num_groups, sms),
         c = workspace_bytes<Legacy, Element>(num_groups, sms);
  *bytes = a > b ? (a > c ? a : c) : (b > c ? b : c);
  return cudaSuccess;
}

cudaError_t grouped_gemm_bf16(const void* a, const int64_t* group_row_ends, int num_groups,
                              const void* b, int64_t b_expert_stride, void* d, int64_t m, int64_t n, int64_t k,
                              int tile, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (num_groups < 0) return cudaErrorInvalidValue;
  if (num_groups == 0) return cudaSuccess;
  Experts<Element> experts;
  cudaError_t err = make_experts(b, b_expert_stride, nullptr, 0, n, k, false, &experts);
  if (err != cudaSuccess) return err;
  if ((err = check_common(a, d, workspace, group_row_ends, m, n, k, 8)) != cudaSuccess) return err;
  auto* pa = static_cast<const Element*>(a);
  auto* pd = static_cast<OutElement*>(d);
  const int ni = static_cast<int>(n), ki = static_cast<int>(k);
  switch (pick_tile(tile, m, num_groups)) {
    case kTileLarge:
      return run<Large, Element>(pa, nullptr, group_row_ends, num_groups, experts, pd, ni, ki, workspace,
                                 workspace_bytes, stream);
    case kTileSmall:
      return run<Small, Element>(pa, nullptr, group_row_ends, num_groups, experts, pd, ni, ki, workspace,
                                 workspace_bytes, stream);
    case kTileLegacy:
      return run<Legacy, Element>(pa, nullptr, group_row_ends, num_groups, experts, pd, ni, ki, workspace,
                                  workspace_bytes, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace dwdp

#endif  // DWDP_WITH_CUTLASS
