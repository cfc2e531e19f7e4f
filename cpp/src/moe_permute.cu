#include <cuda_bf16.h>

#include "dwdp/moe_permute.h"

namespace dwdp {
namespace {

constexpr int kVec = 8;  // bf16 per 16-byte access

// min(n, *limit) with a null limit meaning n: a count that lives on the device.
__device__ __forceinline__ int64_t rows_to_do(int64_t n, const int64_t* limit) {
  if (limit == nullptr) return n;
  const int64_t l = *limit;
  return l < n ? (l < 0 ? 0 : l) : n;
}

__global__ void permute_rows_kernel(const uint4* __restrict__ x, int64_t x_row_vecs, const int64_t* __restrict__ src,
                                    const int64_t* __restrict__ dest, int64_t n, const int64_t* __restrict__ limit,
                                    int64_t vecs_per_row, uint4* __restrict__ out) {
  const int64_t end = rows_to_do(n, limit);
  for (int64_t i = blockIdx.x; i < end; i += gridDim.x) {
    const uint4* in_row = x + src[i] * x_row_vecs;
    uint4* out_row = out + dest[i] * vecs_per_row;
    for (int64_t v = threadIdx.x; v < vecs_per_row; v += blockDim.x) out_row[v] = in_row[v];
  }
}

__global__ void combine_kernel(const __nv_bfloat16* __restrict__ y, const int64_t* __restrict__ row,
                               const float* __restrict__ weight, int64_t tokens, int64_t k_top, int64_t hidden,
                               __nv_bfloat16* __restrict__ out) {
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    for (int64_t c = threadIdx.x * kVec; c < hidden; c += blockDim.x * kVec) {
      float acc[kVec] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      for (int64_t j = 0; j < k_top; ++j) {
        const int64_t a = t * k_top + j;
        if (row[a] < 0) continue;  // an assignment to no expert here (DEP's rows for other ranks' experts)
        const float w = weight[a];
        const uint4 packed = *reinterpret_cast<const uint4*>(y + row[a] * hidden + c);
        const __nv_bfloat162* h2 = reinterpret_cast<const __nv_bfloat162*>(&packed);
#pragma unroll
        for (int e = 0; e < kVec / 2; ++e) {
          const float2 f = __bfloat1622float2(h2[e]);
          acc[2 * e] += w * f.x;
          acc[2 * e + 1] += w * f.y;
        }
      }
      uint4 res;
      __nv_bfloat162* r2 = reinterpret_cast<__nv_bfloat162*>(&res);
#pragma unroll
      for (int e = 0; e < kVec / 2; ++e) r2[e] = __floats2bfloat162_rn(acc[2 * e], acc[2 * e + 1]);
      *reinterpret_cast<uint4*>(out + t * hidden + c) = res;
    }
  }
}

// act[r, c] = silu(gate[r, c]) * up[r, c] in fp32, rounded to bf16; h [m, 2*inter] holds gate and up halves.
__global__ void swiglu_kernel(const __nv_bfloat16* __restrict__ h, __nv_bfloat16* __restrict__ act, int64_t m,
                              const int64_t* __restrict__ limit, int64_t inter, int64_t gate_off, int64_t up_off) {
  const int64_t vecs = inter / kVec;
  const int64_t end = rows_to_do(m, limit);
  for (int64_t r = blockIdx.x; r < end; r += gridDim.x) {
    const __nv_bfloat16* row = h + r * 2 * inter;
    for (int64_t v = threadIdx.x; v < vecs; v += blockDim.x) {
      const uint4 g = *reinterpret_cast<const uint4*>(row + gate_off + v * kVec);
      const uint4 u = *reinterpret_cast<const uint4*>(row + up_off + v * kVec);
      const __nv_bfloat162* g2 = reinterpret_cast<const __nv_bfloat162*>(&g);
      const __nv_bfloat162* u2 = reinterpret_cast<const __nv_bfloat162*>(&u);
      uint4 res;
      __nv_bfloat162* r2 = reinterpret_cast<__nv_bfloat162*>(&res);
#pragma unroll
      for (int e = 0; e < kVec / 2; ++e) {
        const float2 gf = __bfloat1622float2(g2[e]), uf = __bfloat1622float2(u2[e]);
        r2[e] = __floats2bfloat162_rn(gf.x / (1.f + __expf(-gf.x)) * uf.x, gf.y / (1.f + __expf(-gf.y)) * uf.y);
      }
      *reinterpret_cast<uint4*>(act + r * inter + v * kVec) = res;
    }
  }
}

int grid_for(int64_t rows) {
  int64_t g = rows < 1 ? 1 : rows;
  return static_cast<int>(g < 65535 ? g : 65535);
}

int block_for(int64_t vecs) { return vecs >= 256 ? 256 : (vecs >= 128 ? 128 : (vecs >= 64 ? 64 : 32)); }

}  // namespace

cudaError_t permute_rows_bf16(const void* x, const int64_t* src, const int64_t* dest, int64_t n, int64_t hidden,
                              void* out, cudaStream_t stream, const int64_t* limit, int64_t x_row_stride) {
  if (x_row_stride == 0) x_row_stride = hidden;
  if (hidden % kVec != 0 || x_row_stride % kVec != 0 || x_row_stride < hidden) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  const int64_t vecs = hidden / kVec;
  permute_rows_kernel<<<grid_for(n), block_for(vecs), 0, stream>>>(static_cast<const uint4*>(x), x_row_stride / kVec,
                                                                   src, dest, n, limit, vecs,
                                                                   static_cast<uint4*>(out));
  return cudaGetLastError();
}

cudaError_t combine_bf16(const void* y, const int64_t* row, const float* weight, int64_t tokens, int64_t k_top,
                         int64_t hidden, void* out, cudaStream_t stream) {
  if (hidden % kVec != 0) return cudaErrorInvalidValue;
  if (tokens == 0) return cudaSuccess;
  combine_kernel<<<grid_for(tokens), block_for(hidden / kVec), 0, stream>>>(
      static_cast<const __nv_bfloat16*>(y), row, weight, tokens, k_top, hidden, static_cast<__nv_bfloat16*>(out));
  return cudaGetLastError();
}

cudaError_t swiglu_bf16(const void* h, void* act, int64_t m, int64_t inter, bool up_first, cudaStream_t stream,
                        const int64_t* limit) {
  if (inter % kVec != 0 || m < 0) return cudaErrorInvalidValue;
  if (m == 0) return cudaSuccess;
  swiglu_kernel<<<grid_for(m), block_for(inter / kVec), 0, stream>>>(
      static_cast<const __nv_bfloat16*>(h), static_cast<__nv_bfloat16*>(act), m, limit, inter, up_first ? inter : 0,
      up_first ? 0 : inter);
  return cudaGetLastError();
}

}  // namespace dwdp
