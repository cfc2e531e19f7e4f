// One MoE layer's forward on composite expert tensors; see dwdp/moe_layer.h.
#include <cuda_bf16.h>

#include "dwdp/grouped_gemm.h"
#include "dwdp/moe_layer.h"
#include "dwdp/moe_permute.h"

namespace dwdp {

#define DWDP_TRY(expr)                          \
  do {                                          \
    const cudaError_t err_ = (expr);            \
    if (err_ != cudaSuccess) return err_;       \
  } while (0)

cudaError_t moe_forward(const MoeLayerShape& s, const ExpertPointers& w, const void* x, const void* route_a,
                        const void* route_b, int64_t tokens, void* out, void* workspace, size_t workspace_bytes,
                        cudaStream_t stream) {
  if (*check_shape(s) != '\0') return cudaErrorInvalidValue;
  const bool fp8 = s.dtype == ExpertDtype::kFp8Block;
  if (w.w13 == nullptr || w.w2 == nullptr || (fp8 && (w.w13_scale == nullptr || w.w2_scale == nullptr)))
    return cudaErrorInvalidValue;
  if (tokens == 0) return cudaSuccess;
  const MoeWorkspace lay = moe_workspace_layout(s, tokens);
  if (lay.status != cudaSuccess) return lay.status;
  if (workspace == nullptr || workspace_bytes < lay.total) return cudaErrorInvalidValue;
  char* ws = static_cast<char*>(workspace);
  auto at = [ws](size_t off) { return static_cast<void*>(ws + off); };
  const int64_t n = tokens * s.top_k, H = s.hidden, I = s.inter;
  const int E = s.num_experts;

  const int* ids;
  const float* weights;
  if (s.routing == Routing::kPrecomputed) {
    ids = static_cast<const int*>(route_a);
    weights = static_cast<const float*>(route_b);
  } else {
    DWDP_TRY(route_topk(static_cast<const float*>(route_a), tokens, E, s.top_k, s.routing,
                        static_cast<int*>(at(lay.ids)), static_cast<float*>(at(lay.weights)), stream));
    ids = static_cast<const int*>(at(lay.ids));
    weights = static_cast<const float*>(at(lay.weights));
  }
  auto* ends = static_cast<int64_t*>(at(lay.ends));
  auto* src = static_cast<int64_t*>(at(lay.src));
  auto* pos = static_cast<int64_t*>(at(lay.pos));
  auto* row = static_cast<int64_t*>(at(lay.row));
  DWDP_TRY(sort_by_expert(ids, tokens, s.top_k, E, static_cast<int*>(at(lay.counts)), ends, src, pos, row, stream));
  DWDP_TRY(permute_rows_bf16(x, src, pos, n, H, at(lay.xp), stream));

  void* gemm_ws = at(lay.gemm);
  if (fp8) {
    auto* xq_scales = static_cast<float*>(at(lay.xq_scales));
    auto* act_scales = static_cast<float*>(at(lay.act_scales));
    DWDP_TRY(quantize_fp8_rows(at(lay.xp), at(lay.xq), xq_scales, n, H, stream));
    DWDP_TRY(grouped_gemm_fp8(at(lay.xq), xq_scales, ends, E, w.w13, w.w13_stride, w.w13_scale, w.w13_scale_stride,
                              at(lay.h), n, 2 * I, H, kTileAuto, gemm_ws, lay.gemm_bytes, stream));
    DWDP_TRY(swiglu_quantize_fp8(at(lay.h), at(lay.act), act_scales, n, I, s.up_first, stream));
    DWDP_TRY(grouped_gemm_fp8(at(lay.act), act_scales, ends, E, w.w2, w.w2_stride, w.w2_scale, w.w2_scale_stride,
                              at(lay.y), n, H, I, kTileAuto, gemm_ws, lay.gemm_bytes, stream));
  } else {
    DWDP_TRY(grouped_gemm_bf16(at(lay.xp), ends, E, w.w13, w.w13_stride, at(lay.h), n, 2 * I, H, kTileAuto, gemm_ws,
                               lay.gemm_bytes, stream));
    DWDP_TRY(swiglu_bf16(at(lay.h), at(lay.act), n, I, s.up_first, stream));
    DWDP_TRY(grouped_gemm_bf16(at(lay.act), ends, E, w.w2, w.w2_stride, at(lay.y), n, H, I, kTileAuto, gemm_ws,
                               lay.gemm_bytes, stream));
  }
  return combine_bf16(at(lay.y), row, weights, tokens, s.top_k, H, out, stream);
}

}  // namespace dwdp
