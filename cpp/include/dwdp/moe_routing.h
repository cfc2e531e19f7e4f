// Framework-free routing and expert sort for one MoE layer, all on the device (no host sync, graph-capturable).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace dwdp {

// TensorRT-LLM's engine-flow MoeConfig.normalization_mode, plus routing computed outside the layer.
enum class Routing : int {
  kSoftmaxTopK = 0,  // NONE: softmax over all experts, then the top k probabilities
  kRenormalize = 1,  // RENORMALIZE: top k logits, softmax over those k
  kPrecomputed = 2,  // the caller passes top-k ids (int32) and weights (fp32)
};

// logits [tokens, num_experts] fp32 -> ids [tokens, top_k] int32, weights [tokens, top_k] fp32.
// Ties go to the lower expert id (torch.topk's order on CUDA is not specified; tests avoid exact ties).
cudaError_t route_topk(const float* logits, int64_t tokens, int num_experts, int top_k, Routing routing, int* ids,
                       float* weights, cudaStream_t stream);

// Counting sort of n = tokens * top_k assignments by expert id (histogram, scan, scatter). An id outside
// [0, num_experts) means "no expert": it goes to a tail bucket no GEMM group reads.
// counts: [num_experts + 1] int32 scratch; ends: [num_experts] int64, ends[e] = rows of experts 0..e;
// src: [n] int64, the token of assignment a (a / top_k); pos: [n] int64, its row in the sorted order;
// row: [n] int64 for combine_bf16: pos for a real expert, -1 for "no expert" (combine skips it).
// Rows within one expert are in no fixed order (atomics); each row's result does not depend on it.
cudaError_t sort_by_expert(const int* ids, int64_t tokens, int top_k, int num_experts, int* counts, int64_t* ends,
                           int64_t* src, int64_t* pos, int64_t* row, cudaStream_t stream);

}  // namespace dwdp
