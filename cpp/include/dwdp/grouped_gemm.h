// Framework-free split-weight grouped GEMM (BF16 in/out, fp32 accumulate). Raw pointers and a cudaStream_t.
//
// One launch computes, for every group (expert) g with rows [r0, r1) = [ends[g-1], ends[g]) (ends[-1] = 0):
//   D[r0:r1, :] = A[r0:r1, :] @ B_g^T
// where A is row-major [M, K], D is row-major [M, N], and B_g is expert g's row-major [N, K] block
// (a w13 [2I, H] or w2 [H, I] as stored) read IN PLACE from one of several separately stacked segments.
// Groups are in storage order: the first segment_groups[0] groups are experts 0.. of segment 0, the next
// segment_groups[1] are experts 0.. of segment 1, and so on; segment s is a contiguous [E_s, N, K] stack.
// Per-group pointers, strides and problem sizes are built on the device from `ends`, so nothing syncs with
// the host and the call can be captured in a CUDA graph.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace dwdp {

constexpr int kMaxWeightSegments = 8;

// Whether this build holds the kernel (CUTLASS headers were found at build time; it runs on sm_90a only).
bool grouped_gemm_bf16_available();

// Workspace bytes that grouped_gemm_bf16 needs for num_groups groups on the current device.
cudaError_t grouped_gemm_bf16_workspace_size(int num_groups, size_t* bytes);

// a: [M, K] bf16 (device); group_row_ends: [num_groups] int64 (device), non-decreasing, last <= M;
// b_segments: host array of num_segments (<= kMaxWeightSegments) device pointers, each an [E_s, N, K] bf16
// stack; segment_groups: host array, groups taken from each segment (sum = num_groups, <= E_s each);
// d: [M, N] bf16 (device; rows past ends[num_groups-1] are left untouched).
// NOTE: TMA needs every pointer 16-byte aligned and n, k multiples of 8; row counts may be anything (0 too).
cudaError_t grouped_gemm_bf16(const void* a, const int64_t* group_row_ends, int num_groups,
                              const void* const* b_segments, const int* segment_groups, int num_segments, void* d,
                              int64_t n, int64_t k, void* workspace, size_t workspace_bytes, cudaStream_t stream);

}  // namespace dwdp
