// Routing (top-k over router logits), the expert counting sort and a bf16 SwiGLU.
#include <cuda_bf16.h>

#include <cfloat>

#include "dwdp/moe_routing.h"

namespace dwdp {
namespace {

constexpr int kMaxTopK = 32;
constexpr int kThreads = 256;

int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<int>(b < 1 ? 1 : (b < 65535 ? b : 65535));
}

// One thread per token: k passes of an argmax over the experts not yet taken (k and E are small).
__global__ void route_topk_kernel(const float* __restrict__ logits, int64_t tokens, int num_experts, int top_k,
                                  bool renormalize, int* __restrict__ ids, float* __restrict__ weights) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < tokens;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float* row = logits + t * num_experts;
    float mx = -FLT_MAX;
    for (int e = 0; e < num_experts; ++e) mx = fmaxf(mx, row[e]);
    float total = 0.f;
    for (int e = 0; e < num_experts; ++e) total += __expf(row[e] - mx);
    int chosen[kMaxTopK];
    float val[kMaxTopK];
    for (int j = 0; j < top_k; ++j) {
      int best = -1;
      float bv = -FLT_MAX;
      for (int e = 0; e < num_experts; ++e) {
        bool taken = false;
        for (int i = 0; i < j; ++i) taken |= chosen[i] == e;
        if (!taken && (best < 0 || row[e] > bv)) best = e, bv = row[e];
      }
      chosen[j] = best;
      val[j] = bv;
    }
    float ksum = 0.f;
    for (int j = 0; j < top_k; ++j) ksum += __expf(val[j] - val[0]);  // val[0] is the largest
    for (int j = 0; j < top_k; ++j) {
      ids[t * top_k + j] = chosen[j];
      weights[t * top_k + j] = renormalize ? __expf(val[j] - val[0]) / ksum : __expf(val[j] - mx) / total;
    }
  }
}

__device__ inline int bucket_of(int id, int num_experts) {
  return (id >= 0 && id < num_experts) ? id : num_experts;
}

__global__ void histogram_kernel(const int* __restrict__ ids, int64_t n, int num_experts, int* __restrict__ counts) {
  for (int64_t a = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; a < n;
       a += static_cast<int64_t>(gridDim.x) * blockDim.x)
    atomicAdd(&counts[bucket_of(ids[a], num_experts)], 1);
}

// counts -> ends (inclusive, int64) and counts rewritten as each bucket's first row (the scatter cursors).
// NOTE: one thread walks the E + 1 buckets; E is a few hundred at most, far below one kernel launch's cost.
__global__ void scan_kernel(int* __restrict__ counts, int num_experts, int64_t* __restrict__ ends) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  int64_t run = 0;
  for (int e = 0; e <= num_experts; ++e) {
    const int c = counts[e];
    counts[e] = static_cast<int>(run);
    run += c;
    if (e < num_experts) ends[e] = run;
  }
}

__global__ void scatter_kernel(const int* __restrict__ ids, int64_t n, int top_k, int num_experts,
                               int* __restrict__ cursor, int64_t* __restrict__ src, int64_t* __restrict__ pos,
                               int64_t* __restrict__ row) {
  for (int64_t a = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; a < n;
       a += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int b = bucket_of(ids[a], num_experts);
    const int64_t p = atomicAdd(&cursor[b], 1);
    src[a] = a / top_k;
    pos[a] = p;
    row[a] = b == num_experts ? -1 : p;  // combine_bf16 skips "no expert"
  }
}

}  // namespace

cudaError_t route_topk(const float* logits, int64_t tokens, int num_experts, int top_k, Routing routing, int* ids,
                       float* weights, cudaStream_t stream) {
  if (routing == Routing::kPrecomputed || top_k < 1 || top_k > kMaxTopK || top_k > num_experts)
    return cudaErrorInvalidValue;
  if (tokens == 0) return cudaSuccess;
  route_topk_kernel<<<blocks_for(tokens), kThreads, 0, stream>>>(logits, tokens, num_experts, top_k,
                                                                 routing == Routing::kRenormalize, ids, weights);
  return cudaGetLastError();
}

cudaError_t sort_by_expert(const int* ids, int64_t tokens, int top_k, int num_experts, int* counts, int64_t* ends,
                           int64_t* src, int64_t* pos, int64_t* row, cudaStream_t stream) {
  if (num_experts < 1 || top_k < 1) return cudaErrorInvalidValue;
  const int64_t n = tokens * top_k;
  cudaError_t err = cudaMemsetAsync(counts, 0, sizeof(int) * (num_experts + 1), stream);
  if (err != cudaSuccess) return err;
  if (n > 0) histogram_kernel<<<blocks_for(n), kThreads, 0, stream>>>(ids, n, num_experts, counts);
  scan_kernel<<<1, 1, 0, stream>>>(counts, num_experts, ends);
  if (n > 0)
    scatter_kernel<<<blocks_for(n), kThreads, 0, stream>>>(ids, n, top_k, num_experts, counts, src, pos, row);
  return cudaGetLastError();
}

}  // namespace dwdp
