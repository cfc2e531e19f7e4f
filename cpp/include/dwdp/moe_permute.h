// Framework-free permute / combine for split-weight MoE. Raw pointers and a cudaStream_t.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace dwdp {

// out[dest[i], :] = x[src[i], :] for i < n. x, out: row-major [*, hidden] bf16.
// Rows of out that no dest names are left untouched.
cudaError_t permute_rows_bf16(const void* x, const int64_t* src, const int64_t* dest, int64_t n, int64_t hidden,
                              void* out, cudaStream_t stream);

constexpr int kMaxSegments = 8;

// out[t, :] = sum_j weight[a] * seg_out[segment[a]][row[a], :] with a = t*k_top + j, accumulated in fp32.
// seg_out: host array of num_segments (<= kMaxSegments) device pointers, each row-major [*, hidden] bf16;
// they travel as kernel arguments, so no host-to-device copy is needed. out: [tokens, hidden] bf16.
cudaError_t combine_bf16(const void* const* seg_out, int num_segments, const int64_t* segment, const int64_t* row,
                         const float* weight, int64_t tokens, int64_t k_top, int64_t hidden, void* out,
                         cudaStream_t stream);

}  // namespace dwdp
