// Framework-free permute, SwiGLU and combine of the MoE expert path. Raw pointers and a cudaStream_t.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace dwdp {

// out[dest[i], :] = x[src[i], :] for i < n. x, out: row-major [*, hidden] bf16.
// Rows of out that no dest names are left untouched.
// limit (device, may be null): only i < min(n, *limit) are moved, read on the device, so a static-shape launch
// stops at a count the host never sees (DEP's received assignments). x_row_stride: elements between x's rows
// (0: hidden; a multiple of 8), so a strided view (a receive buffer's hidden columns) is read in place.
cudaError_t permute_rows_bf16(const void* x, const int64_t* src, const int64_t* dest, int64_t n, int64_t hidden,
                              void* out, cudaStream_t stream, const int64_t* limit = nullptr,
                              int64_t x_row_stride = 0);

// out[t, :] = sum_j weight[a] * y[row[a], :] with a = t*k_top + j, accumulated in fp32; row[a] < 0 skips the
// assignment (no expert of this rank). y: row-major [*, hidden] bf16; out: [tokens, hidden] bf16.
cudaError_t combine_bf16(const void* y, const int64_t* row, const float* weight, int64_t tokens, int64_t k_top,
                         int64_t hidden, void* out, cudaStream_t stream);

// act = silu(gate) * up, fp32 math, bf16 out: h [m, 2*inter] holds gate then up columns (up then gate with
// up_first, TensorRT-LLM's w3_w1 order); act [m, inter]. inter must be a multiple of 8.
// limit (device, may be null): only rows r < min(m, *limit) are computed; the rest of act is left untouched.
cudaError_t swiglu_bf16(const void* h, void* act, int64_t m, int64_t inter, bool up_first, cudaStream_t stream,
                        const int64_t* limit = nullptr);

}  // namespace dwdp
