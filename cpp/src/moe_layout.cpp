#include "dwdp/grouped_gemm.h"
#include "dwdp/moe_layer.h"

namespace dwdp {

const char* check_shape(const MoeLayerShape& s) {
  if (s.num_experts < 1) return "num_experts must be >= 1";
  if (s.top_k < 1 || s.top_k > 32 || s.top_k > s.num_experts) return "top_k must be in [1, min(32, num_experts)]";
  const int mult = s.dtype == ExpertDtype::kFp8Block ? 128 : 8;
  if (s.hidden < mult || s.hidden % mult)
    return s.dtype == ExpertDtype::kFp8Block ? "hidden must be a positive multiple of 128 for FP8 block-scaled experts"
                                             : "hidden must be a positive multiple of 8 (16-byte rows)";
  if (s.inter < mult || s.inter % mult)
    return s.dtype == ExpertDtype::kFp8Block ? "intermediate must be a positive multiple of 128 for FP8 experts"
                                             : "intermediate must be a positive multiple of 8 (16-byte rows)";
  if (s.routing != Routing::kSoftmaxTopK && s.routing != Routing::kRenormalize && s.routing != Routing::kPrecomputed)
    return "routing must be 0 (softmax top-k), 1 (renormalize) or 2 (precomputed ids and weights)";
  if (s.dtype != ExpertDtype::kBf16 && s.dtype != ExpertDtype::kFp8Block)
    return "dtype must be 0 (bf16) or 1 (fp8 block-scaled)";
  return "";
}

MoeWorkspace moe_workspace_layout(const MoeLayerShape& s, int64_t tokens) {
  MoeWorkspace w{};
  size_t at = 0;
  auto take = [&at](size_t bytes) {
    const size_t off = at;
    at += (bytes + 255) / 256 * 256;
    return off;
  };
  const size_t n = static_cast<size_t>(tokens) * s.top_k, E = s.num_experts, H = s.hidden, I = s.inter;
  const bool fp8 = s.dtype == ExpertDtype::kFp8Block;
  w.ids = take(n * 4);
  w.weights = take(n * 4);
  w.counts = take((E + 1) * 4);
  w.ends = take(E * 8);
  w.src = take(n * 8);
  w.pos = take(n * 8);
  w.row = take(n * 8);
  w.xp = take(n * H * 2);
  w.xq = fp8 ? take(n * H) : 0;
  w.xq_scales = fp8 ? take(n * (H / 128) * 4) : 0;
  w.h = take(n * 2 * I * 2);
  w.act = take(n * I * (fp8 ? 1 : 2));
  w.act_scales = fp8 ? take(n * (I / 128) * 4) : 0;
  w.y = take(n * H * 2);
  size_t gemm = 0;
  w.status = fp8 ? grouped_gemm_fp8_workspace_size(s.num_experts, &gemm)
                 : grouped_gemm_bf16_workspace_size(s.num_experts, &gemm);
  w.gemm_bytes = gemm;
  w.gemm = take(gemm);
  w.total = at;
  return w;
}

}  // namespace dwdp
