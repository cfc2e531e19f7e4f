// 1x128 FP8 (e4m3) activation quantization, plain and fused after SwiGLU: the activations of DeepSeek-V3's
// block-scaled expert GEMMs. One warp per 128-column block: each lane loads 4 bf16, a shuffle reduction finds
// the block's amax, and the warp writes 128 fp8 values and one fp32 scale.
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include "dwdp/grouped_gemm.h"

namespace dwdp {
namespace {

constexpr int kBlock = 128;
constexpr int kWarpsPerCta = 8;
constexpr float kFp8Max = 448.f;
constexpr float kMinAmax = 1e-4f;  // an all-zero block gets a finite scale instead of 0/0

__device__ inline float4 load_bf16x4(const __nv_bfloat16* p) {
  const uint2 raw = *reinterpret_cast<const uint2*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
  const float2 a = __bfloat1622float2(h[0]), b = __bfloat1622float2(h[1]);
  return make_float4(a.x, a.y, b.x, b.y);
}

__device__ inline void quantize_store(float4 v, int lane, uint32_t* q4, float* scale) {
  float amax = fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)));
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
  amax = fmaxf(amax, kMinAmax);
  const float inv = kFp8Max / amax;
  const __nv_fp8x4_e4m3 q(make_float4(v.x * inv, v.y * inv, v.z * inv, v.w * inv));
  *q4 = q.__x;
  if (lane == 0) *scale = amax / kFp8Max;
}

// Block (r, b) of x [m, k] -> q [m, k], scales [m, k/128].
__global__ void quantize_rows_kernel(const __nv_bfloat16* __restrict__ x, uint32_t* __restrict__ q,
                                     float* __restrict__ scales, int64_t blocks, int64_t kb) {
  const int lane = threadIdx.x & 31;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kWarpsPerCta;
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * kWarpsPerCta + threadIdx.x / 32; w < blocks; w += stride) {
    const int64_t col = w * kBlock + lane * 4;  // w = r * kb + b, so the flat offset is w * 128
    quantize_store(load_bf16x4(x + col), lane, q + col / 4, scales + w);
  }
}

// Block (r, b) of act = silu(gate) * up, h [m, 2*inter] (gate, up halves at gate_off / up_off) -> q [m, inter], scales [m, inter/128].
// limit (device, may be null): only rows < *limit, a count the host never reads (the grouped GEMMs' real rows).
__global__ void swiglu_quantize_kernel(const __nv_bfloat16* __restrict__ h, uint32_t* __restrict__ q,
                                       float* __restrict__ scales, int64_t blocks, int64_t kb, int64_t inter,
                                       int64_t gate_off, int64_t up_off, const int64_t* __restrict__ limit) {
  const int lane = threadIdx.x & 31;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kWarpsPerCta;
  if (limit != nullptr && *limit * kb < blocks) blocks = *limit * kb;
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * kWarpsPerCta + threadIdx.x / 32; w < blocks; w += stride) {
    const int64_t r = w / kb, c = (w % kb) * kBlock + lane * 4;
    const __nv_bfloat16* row = h + r * 2 * inter;
    const float4 g = load_bf16x4(row + gate_off + c), u = load_bf16x4(row + up_off + c);
    auto act = [](float gv, float uv) { return gv / (1.f + __expf(-gv)) * uv; };
    quantize_store(make_float4(act(g.x, u.x), act(g.y, u.y), act(g.z, u.z), act(g.w, u.w)), lane,
                   q + (r * inter + c) / 4, scales + w);
  }
}

int grid_for_blocks(int64_t blocks) {
  const int64_t ctas = (blocks + kWarpsPerCta - 1) / kWarpsPerCta;
  return static_cast<int>(ctas < 1 ? 1 : (ctas < 65535 ? ctas : 65535));
}

bool aligned(const void* p, uintptr_t a) { return (reinterpret_cast<uintptr_t>(p) & (a - 1)) == 0; }

}  // namespace

cudaError_t quantize_fp8_rows(const void* x, void* q, float* scales, int64_t m, int64_t k, cudaStream_t stream) {
  if (m < 0 || k <= 0 || k % kBlock || !aligned(x, 8) || !aligned(q, 4) || !aligned(scales, 4))
    return cudaErrorInvalidValue;
  if (m == 0) return cudaSuccess;
  const int64_t blocks = m * (k / kBlock);
  quantize_rows_kernel<<<grid_for_blocks(blocks), kWarpsPerCta * 32, 0, stream>>>(
      static_cast<const __nv_bfloat16*>(x), static_cast<uint32_t*>(q), scales, blocks, k / kBlock);
  return cudaGetLastError();
}

cudaError_t swiglu_quantize_fp8(const void* h, void* q, float* scales, int64_t m, int64_t inter, bool up_first,
                                cudaStream_t stream, const int64_t* limit) {
  if (m < 0 || inter <= 0 || inter % kBlock || !aligned(h, 8) || !aligned(q, 4) || !aligned(scales, 4))
    return cudaErrorInvalidValue;
  if (m == 0) return cudaSuccess;
  const int64_t blocks = m * (inter / kBlock);
  swiglu_quantize_kernel<<<grid_for_blocks(blocks), kWarpsPerCta * 32, 0, stream>>>(
      static_cast<const __nv_bfloat16*>(h), static_cast<uint32_t*>(q), scales, blocks, inter / kBlock, inter,
      up_first ? inter : 0, up_first ? 0 : inter, limit);
  return cudaGetLastError();
}

}  // namespace dwdp
