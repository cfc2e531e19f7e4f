// Framework-free grouped GEMMs for Hopper (CUTLASS 3.x ptr-array). Raw pointers, a cudaStream_t.
//
// One launch computes, for every group (expert) g with rows [r0, r1) = [ends[g-1], ends[g]) (ends[-1] = 0):
//   D[r0:r1, :] = A[r0:r1, :] @ B_g^T
// where A is row-major [M, K], D is row-major [M, N] bf16, and B_g is expert g's row-major [N, K] block (a w13
// [2I, H] or w2 [H, I] as stored), read in place at b + g * b_expert_stride elements: one [G, N, K] stack, such
// as a DWDP composite view (local experts and prefetched ones joined in virtual memory, experts possibly padded
// to the mapping granularity) or an ordinary tensor. Per-group pointers, strides and problem sizes are built on
// the device from `ends`, so nothing syncs with the host and the call can be captured in a CUDA graph.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace dwdp {

// Kernel shapes. kTileAuto picks by the mean rows per group (M / groups), which the host knows without a sync.
enum GroupedGemmTile : int {
  kTileAuto = 0,
  kTileLarge = 1,   // bf16: 128x256x64 cooperative, cluster 2x1; fp8: 128x128x128 cooperative, cluster 1x2
  kTileSmall = 2,   // bf16 and fp8: 64x128x128 ping-pong (few rows per expert)
  kTileLegacy = 3,  // bf16 only: 128x128x64 cooperative, cluster 1x1 (the first tile shipped; kept to compare)
};

// Whether this build holds the kernels (CUTLASS headers were found at build time; they run on sm_90a only).
bool grouped_gemm_available();

// Workspace bytes that grouped_gemm_bf16 / grouped_gemm_fp8 need for num_groups groups (any tile).
cudaError_t grouped_gemm_bf16_workspace_size(int num_groups, size_t* bytes);
cudaError_t grouped_gemm_fp8_workspace_size(int num_groups, size_t* bytes);

// a: [m, k] bf16 (device); group_row_ends: [num_groups] int64 (device), non-decreasing, last <= m;
// b: [num_groups, n, k] bf16 (device), experts b_expert_stride (>= n*k) elements apart;
// d: [m, n] bf16 (device; rows past ends[num_groups-1] are left untouched).
// NOTE: TMA needs every pointer and expert 16-byte aligned and n, k multiples of 8; row counts may be anything.
cudaError_t grouped_gemm_bf16(const void* a, const int64_t* group_row_ends, int num_groups, const void* b,
                              int64_t b_expert_stride, void* d, int64_t m, int64_t n, int64_t k, int tile,
                              void* workspace, size_t workspace_bytes, cudaStream_t stream);

// DeepSeek-V3 block-scaled FP8 (e4m3): A is quantized per row in 1x128 groups, B per expert in 128x128 blocks.
//   D[r, c] = sum_kb a_scales[r, kb] * b_scale_g[c / 128, kb] * sum_{j in kb} A[r, j] * B_g[c, j]
// a: [m, k] fp8; a_scales: [m, k/128] fp32 row-major; b: [num_groups, n, k] fp8, experts b_expert_stride apart;
// b_scales: [num_groups, n/128, k/128] fp32 (DeepSeek's weight_scale_inv layout), b_scale_expert_stride floats
// apart; d: [m, n] bf16. n and k must be multiples of 128.
cudaError_t grouped_gemm_fp8(const void* a, const float* a_scales, const int64_t* group_row_ends, int num_groups,
                             const void* b, int64_t b_expert_stride, const float* b_scales,
                             int64_t b_scale_expert_stride, void* d, int64_t m, int64_t n, int64_t k, int tile,
                             void* workspace, size_t workspace_bytes, cudaStream_t stream);

// 1x128 activation quantization (e4m3, scale = max(amax, 1e-4) / 448): x [m, k] bf16 -> q [m, k] fp8,
// scales [m, k/128] fp32. k must be a multiple of 128.
cudaError_t quantize_fp8_rows(const void* x, void* q, float* scales, int64_t m, int64_t k, cudaStream_t stream);

// SwiGLU then 1x128 quantization: h [m, 2*inter] bf16 (gate columns, then up; up first with up_first) ->
// act = silu(gate) * up in fp32 -> q [m, inter] fp8, scales [m, inter/128] fp32. inter: a multiple of 128.
// limit (device memory, optional): only rows < *limit are written, the rest left as they were.
cudaError_t swiglu_quantize_fp8(const void* h, void* q, float* scales, int64_t m, int64_t inter, bool up_first,
                                cudaStream_t stream, const int64_t* limit = nullptr);

}  // namespace dwdp
