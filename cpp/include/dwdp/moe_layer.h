// One DWDP MoE layer's forward on raw pointers: route -> counting sort -> permute -> grouped GEMM w13 ->
// SwiGLU (fused with 1x128 quantization for FP8) -> grouped GEMM w2 -> weighted combine. Everything runs on
// `stream` from device data: no host sync, so it can be captured in a CUDA graph or run inside a TensorRT engine.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "dwdp/context.h"
#include "dwdp/moe_routing.h"

namespace dwdp {

enum class ExpertDtype : int {
  kBf16 = 0,      // bf16 activations and experts
  kFp8Block = 1,  // DeepSeek-V3 FP8 e4m3: activations 1x128, experts 128x128 block scales
};

struct MoeLayerShape {
  int num_experts = 0;
  int hidden = 0;
  int inter = 0;
  int top_k = 0;
  Routing routing = Routing::kRenormalize;
  ExpertDtype dtype = ExpertDtype::kBf16;
  bool up_first = false;  // w13 rows: gate then up (false), or up then gate (TensorRT-LLM's w3_w1)
};

// Empty when the shape is valid, else one sentence naming the field, its value and the rule.
// (hidden and inter multiples of 128 for FP8, of 8 for BF16; 1 <= top_k <= min(32, num_experts).)
const char* check_shape(const MoeLayerShape& s);

// Byte offsets (256-aligned) of every buffer the forward needs for `tokens` rows, and the total.
struct MoeWorkspace {
  size_t ids, weights, counts, ends, src, pos, row;           // routing and sort
  size_t xp, xq, xq_scales;                                   // permuted input (and its FP8 quantization)
  size_t h, act, act_scales;                                  // w13 output, SwiGLU output (FP8: + scales)
  size_t y, gemm;                                             // w2 output, GEMM workspace
  size_t gemm_bytes;
  size_t total;
  cudaError_t status;  // the GEMM workspace query's result (it needs a device); total is only valid on success
};
MoeWorkspace moe_workspace_layout(const MoeLayerShape& s, int64_t tokens);

// x: [tokens, hidden] bf16. Routing kSoftmaxTopK / kRenormalize: route_a = logits [tokens, num_experts] fp32,
// route_b unused. kPrecomputed: route_a = ids [tokens, top_k] int32 (num_experts = no expert), route_b =
// weights [tokens, top_k] fp32. w: the layer's composite experts (FP8 needs the scales). out: [tokens, hidden]
// bf16. workspace: at least moe_workspace_layout(s, tokens).total bytes.
cudaError_t moe_forward(const MoeLayerShape& s, const ExpertPointers& w, const void* x, const void* route_a,
                        const void* route_b, int64_t tokens, void* out, void* workspace, size_t workspace_bytes,
                        cudaStream_t stream);

}  // namespace dwdp
