// Shared machinery of the Hopper grouped GEMMs (bf16 and block-scaled fp8): a CUTLASS 3.x
// ptr-array kernel per tile shape, with its per-group arrays built on the device from the group row ends.
#pragma once

// NOTE: CUTLASS's device asserts must be off, as in its own release builds: an assert is a call inside the
// wgmma pipeline (ptxas then serializes wgmma), and the ptr-array producer trips a consumer-only pipeline
// assert on purpose (NVIDIA/cutlass#2126).
#ifndef NDEBUG
#define NDEBUG
#endif

#include <cuda_bf16.h>

#include <mutex>
#include <type_traits>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/detail/blockwise_scale_layout.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/group_array_problem_shape.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "dwdp/grouped_gemm.h"

namespace dwdp::sm90 {

using namespace cute;

using ProblemShape = cutlass::gemm::GroupProblemShape<Shape<int, int, int>>;  // (M, N, K) per group
using Shape3 = typename ProblemShape::UnderlyingProblemShape;
using Accum = float;
using OutElement = cutlass::bfloat16_t;
// A: activations [M, K] row-major. B: expert block [N, K] row-major == "column-major K x N". D: [M, N] row-major.
using LayoutA = cutlass::layout::RowMajor;
using LayoutB = cutlass::layout::ColumnMajor;
using LayoutD = cutlass::layout::RowMajor;
constexpr int kAlignD = 8;  // bf16, 16 bytes (TMA)
constexpr int kScaleBlock = 128;

// Blockwise scales, both K-major: A's [M, K/128] (one per row per 128 columns) and B's [N/128, K/128], the
// layouts DeepSeek checkpoints and 1x128 quantizers produce, so neither is transposed. With a 128-wide N
// tile each B tile takes one scale per K block, so B's major order does not change the shared-memory copy.
using ScaleConfig = cutlass::detail::Sm90BlockwiseScaleConfig<1, kScaleBlock, kScaleBlock, cute::GMMA::Major::K,
                                                              cute::GMMA::Major::K>;
using LayoutSFA = decltype(ScaleConfig::deduce_layoutSFA());
using LayoutSFB = decltype(ScaleConfig::deduce_layoutSFB());

// A kernel for one element type and tile. Scaled = block-scaled fp8 mainloop.
template <class Element, bool Scaled, class TileShape, class ClusterShape, class KernelSchedule,
          class EpilogueSchedule>
struct Config {
  static constexpr int kAlign = 128 / cutlass::sizeof_bits<Element>::value;
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, Accum, Accum, void, LayoutD*, kAlignD,  // no C: D = acc
      OutElement, LayoutD*, kAlignD, EpilogueSchedule,
      cutlass::epilogue::fusion::LinearCombination<OutElement, Accum, void, Accum>>::CollectiveOp;
  using StageCount = cutlass::gemm::collective::StageCountAutoCarveout<
      static_cast<int>(sizeof(typename Epilogue::SharedStorage))>;
  using GuardA = std::conditional_t<Scaled, cute::tuple<LayoutA*, LayoutSFA*>, LayoutA*>;
  using GuardB = std::conditional_t<Scaled, cute::tuple<LayoutB*, LayoutSFB*>, LayoutB*>;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, GuardA, kAlign, Element, GuardB, kAlign, Accum,
      TileShape, ClusterShape, StageCount, KernelSchedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, Mainloop, Epilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  using StrideA = typename Kernel::InternalStrideA;
  using StrideB = typename Kernel::InternalStrideB;
  using StrideD = typename Kernel::InternalStrideD;
};

// Where group g's weights (and weight scales) start: one [G, n, k] stack, experts expert_stride elements apart
// (a composite view may pad experts to the mapping granularity), scales scale_stride floats apart.
template <class Element>
struct Experts {
  const Element* base;
  int64_t stride;
  const float* scale;
  int64_t scale_stride;
};

template <class Element>
cudaError_t make_experts(const void* b, int64_t expert_stride, const float* b_scales, int64_t scale_stride,
                         int64_t n, int64_t k, bool scaled, Experts<Element>* out) {
  const auto bytes = static_cast<int64_t>(sizeof(Element));
  // TMA reads each expert's block from its own base: 16-byte aligned, no overlap with the next expert.
  if (b == nullptr || (reinterpret_cast<uintptr_t>(b) & 15) || expert_stride < n * k || (expert_stride * bytes) % 16)
    return cudaErrorInvalidValue;
  const int64_t scales = (n / kScaleBlock) * (k / kScaleBlock);
  if (scaled && (b_scales == nullptr || (reinterpret_cast<uintptr_t>(b_scales) & 3) || scale_stride < scales))
    return cudaErrorInvalidValue;
  *out = Experts<Element>{static_cast<const Element*>(b), expert_stride, b_scales, scale_stride};
  return cudaSuccess;
}

inline int sm_count_of_current_device(cudaError_t* err) {
  // NOTE: cached per device; cudaGetDeviceProperties (CUTLASS's fallback) costs milliseconds per call.
  static std::mutex mu;
  static int cached[64] = {0};
  int dev = 0;
  if ((*err = cudaGetDevice(&dev)) != cudaSuccess) return 0;
  std::lock_guard<std::mutex> lock(mu);
  if (dev < 64 && cached[dev] > 0) return cached[dev];
  int sms = 0;
  if ((*err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess) return 0;
  if (dev < 64) cached[dev] = sms;
  return sms;
}

constexpr size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

// Per-group device arrays carved from the front of the caller's workspace; CUTLASS's workspace follows.
template <class Cfg, class Element>
struct GroupArrays {
  Shape3* problem;
  const Element** ptr_a;
  const Element** ptr_b;
  OutElement** ptr_d;
  typename Cfg::StrideA* stride_a;
  typename Cfg::StrideB* stride_b;
  typename Cfg::StrideD* stride_d;
  const float** ptr_sfa;
  const float** ptr_sfb;
  LayoutSFA* layout_sfa;
  LayoutSFB* layout_sfb;
  size_t bytes;

  static GroupArrays carve(void* base, int g) {
    GroupArrays r{};
    size_t off = 0;
    auto take = [&](auto*& p, size_t elem) {
      p = reinterpret_cast<std::remove_reference_t<decltype(p)>>(static_cast<char*>(base) + off);
      off = round_up(off + elem * g, 256);
    };
    take(r.problem, sizeof(Shape3));
    take(r.ptr_a, sizeof(void*));
    take(r.ptr_b, sizeof(void*));
    take(r.ptr_d, sizeof(void*));
    take(r.stride_a, sizeof(typename Cfg::StrideA));
    take(r.stride_b, sizeof(typename Cfg::StrideB));
    take(r.stride_d, sizeof(typename Cfg::StrideD));
    take(r.ptr_sfa, sizeof(void*));
    take(r.ptr_sfb, sizeof(void*));
    take(r.layout_sfa, sizeof(LayoutSFA));
    take(r.layout_sfb, sizeof(LayoutSFB));
    r.bytes = off;
    return r;
  }
};

template <class Cfg, class Element>
__global__ void prep_groups_kernel(GroupArrays<Cfg, Element> out, const int64_t* __restrict__ ends, int num_groups,
                                   Experts<Element> experts, const Element* a, const float* a_scales, OutElement* d,
                                   int n, int k) {
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= num_groups) return;
  const int64_t r0 = g == 0 ? 0 : ends[g - 1];
  const int64_t r1 = ends[g];
  const int rows = static_cast<int>(r1 > r0 ? r1 - r0 : 0);
  out.problem[g] = make_shape(rows, n, k);
  out.ptr_a[g] = a + r0 * k;
  out.ptr_b[g] = experts.base + g * experts.stride;
  out.ptr_d[g] = d + r0 * n;
  typename Cfg::StrideA sa{};
  typename Cfg::StrideB sb{};
  typename Cfg::StrideD sd{};
  get<0>(sa) = k;  // row pitch of A
  get<0>(sb) = k;  // row pitch of an expert's [N, K] block
  get<0>(sd) = n;  // row pitch of D
  out.stride_a[g] = sa;
  out.stride_b[g] = sb;
  out.stride_d[g] = sd;
  if (a_scales != nullptr) {
    const int64_t kb = k / kScaleBlock;
    out.ptr_sfa[g] = a_scales + r0 * kb;
    out.ptr_sfb[g] = experts.scale + g * experts.scale_stride;
    out.layout_sfa[g] = ScaleConfig::tile_atom_to_shape_SFA(make_shape(rows, n, k, 1));
    out.layout_sfb[g] = ScaleConfig::tile_atom_to_shape_SFB(make_shape(rows, n, k, 1));
  }
}

template <class Cfg, class Element>
typename Cfg::Gemm::Arguments make_args(const GroupArrays<Cfg, Element>& ga, int num_groups, int device, int sms) {
  typename Cfg::Gemm::Arguments args;
  args.mode = cutlass::gemm::GemmUniversalMode::kGrouped;
  args.problem_shape = {num_groups, ga.problem, nullptr};  // sizes live only on the device
  if constexpr (std::is_same_v<typename Cfg::GuardA, LayoutA*>) {
    args.mainloop = {ga.ptr_a, ga.stride_a, ga.ptr_b, ga.stride_b};
  } else {
    args.mainloop = {ga.ptr_a, ga.stride_a, ga.ptr_b, ga.stride_b, ga.ptr_sfa, ga.layout_sfa, ga.ptr_sfb,
                     ga.layout_sfb};
  }
  args.epilogue.ptr_C = nullptr;
  args.epilogue.ptr_D = ga.ptr_d;
  args.epilogue.dD = ga.stride_d;
  auto& fusion = args.epilogue.thread;
  fusion.alpha = 1.f;
  fusion.beta = 0.f;
  fusion.alpha_ptr = nullptr;
  fusion.beta_ptr = nullptr;
  fusion.alpha_ptr_array = nullptr;
  fusion.beta_ptr_array = nullptr;
  args.hw_info.device_id = device;
  args.hw_info.sm_count = sms;
  return args;
}

template <class Cfg, class Element>
size_t workspace_bytes(int num_groups, int sms) {
  using GA = GroupArrays<Cfg, Element>;
  GA ga = GA::carve(nullptr, num_groups);
  return ga.bytes + Cfg::Gemm::get_workspace_size(make_args<Cfg, Element>(ga, num_groups, 0, sms));
}

// Builds the group arrays on the device, then runs the kernel; a_scales is null for unscaled kernels.
template <class Cfg, class Element>
cudaError_t run(const Element* a, const float* a_scales, const int64_t* ends, int num_groups,
                const Experts<Element>& experts, OutElement* d, int n, int k, void* workspace, size_t ws_bytes,
                cudaStream_t stream) {
  using GA = GroupArrays<Cfg, Element>;
  cudaError_t err = cudaSuccess;
  const int sms = sm_count_of_current_device(&err);
  if (err != cudaSuccess) return err;
  int device = 0;
  if ((err = cudaGetDevice(&device)) != cudaSuccess) return err;
  const GA ga = GA::carve(workspace, num_groups);
  if (workspace == nullptr || ws_bytes < workspace_bytes<Cfg, Element>(num_groups, sms)) return cudaErrorInvalidValue;

  constexpr int kThreads = 128;
  prep_groups_kernel<Cfg, Element><<<(num_groups + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
      ga, ends, num_groups, experts, a, a_scales, d, n, k);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;

  typename Cfg::Gemm gemm;
  const auto args = make_args<Cfg, Element>(ga, num_groups, device, sms);
  void* gemm_workspace = static_cast<char*>(workspace) + ga.bytes;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return cudaErrorInvalidValue;
  if (gemm.initialize(args, gemm_workspace, stream) != cutlass::Status::kSuccess) return cudaErrorLaunchFailure;
  if (gemm.run(stream) != cutlass::Status::kSuccess) {
    err = cudaGetLastError();
    return err != cudaSuccess ? err : cudaErrorLaunchFailure;
  }
  return cudaGetLastError();
}

// Checks shared by both precisions before any launch.
inline cudaError_t check_common(const void* a, const void* d, const void* workspace, const int64_t* ends,
                                int64_t m, int64_t n, int64_t k, int64_t mult) {
  auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  if (m < 0 || n <= 0 || k <= 0 || n % mult || k % mult || n > INT32_MAX || k > INT32_MAX || m > INT32_MAX)
    return cudaErrorInvalidValue;
  if (!aligned(a) || !aligned(d) || !aligned(workspace) || ends == nullptr) return cudaErrorInvalidValue;
  return cudaSuccess;
}

// Mean rows per group at or below which the ping-pong 64-row tile wins (few tokens per expert).
constexpr int64_t kSmallRowsPerGroup = 64;

inline int pick_tile(int tile, int64_t m, int num_groups) {
  if (tile != kTileAuto) return tile;
  return m <= kSmallRowsPerGroup * num_groups ? kTileSmall : kTileLarge;
}

}  // namespace dwdp::sm90
