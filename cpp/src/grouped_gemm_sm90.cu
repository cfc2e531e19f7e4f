// Split-weight grouped GEMM for Hopper: CUTLASS 3.x ptr-array grouped GEMM (TMA, warp-specialized
// cooperative), one launch over every group of every weight segment. Built only with CUTLASS headers
// (setup.py defines DWDP_WITH_CUTLASS); otherwise this file is empty and the binding registers nothing.
#ifdef DWDP_WITH_CUTLASS

// NOTE: CUTLASS's device asserts must be off, as in its own release builds: an assert is a call inside the
// wgmma pipeline (ptxas then serializes wgmma), and the ptr-array producer trips a consumer-only pipeline
// assert on purpose (NVIDIA/cutlass#2126).
#ifndef NDEBUG
#define NDEBUG
#endif

#include <cuda_bf16.h>

#include <mutex>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/group_array_problem_shape.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "dwdp/grouped_gemm.h"

namespace dwdp {
namespace {

using namespace cute;

using ProblemShape = cutlass::gemm::GroupProblemShape<Shape<int, int, int>>;  // (M, N, K) per group
using Element = cutlass::bfloat16_t;
using Accum = float;
// A: activations [M, K] row-major. B: expert block [N, K] row-major == "column-major K x N". D: [M, N] row-major.
using LayoutA = cutlass::layout::RowMajor;
using LayoutB = cutlass::layout::ColumnMajor;
using LayoutD = cutlass::layout::RowMajor;
constexpr int kAlign = 128 / cutlass::sizeof_bits<Element>::value;  // 8 bf16 = 16 bytes (TMA)

// NOTE: cooperative needs a 128-row M tile (two consumer warpgroups of 64 rows). A 1x1x1 cluster keeps
// every CTA independent, so groups with few rows waste no multicast partner.
using TileShape = Shape<_128, _128, _64>;
using ClusterShape = Shape<_1, _1, _1>;

using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, Accum, Accum,
    void, LayoutD*, kAlign,  // no C source: D = acc
    Element, LayoutD*, kAlign, cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative,
    cutlass::epilogue::fusion::LinearCombination<Element, Accum, void, Accum>>::CollectiveOp;

using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, LayoutA*, kAlign, Element, LayoutB*, kAlign, Accum,
    TileShape, ClusterShape,
    cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
    cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative>::CollectiveOp;

using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, Mainloop, Epilogue>;
using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

using StrideA = typename Kernel::InternalStrideA;
using StrideB = typename Kernel::InternalStrideB;
using StrideD = typename Kernel::InternalStrideD;
using Shape3 = typename ProblemShape::UnderlyingProblemShape;

struct Segments {
  const Element* base[kMaxWeightSegments];
  int first_group[kMaxWeightSegments + 1];  // prefix sums of segment_groups
  int count;
};

// Per-group device arrays carved from the front of the caller's workspace.
struct GroupArrays {
  Shape3* problem;
  const Element** ptr_a;
  const Element** ptr_b;
  Element** ptr_d;
  StrideA* stride_a;
  StrideB* stride_b;
  StrideD* stride_d;
  size_t bytes;  // total, rounded so the CUTLASS workspace that follows is 256-byte aligned
};

constexpr size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

GroupArrays carve(void* base, int g) {
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
  take(r.stride_a, sizeof(StrideA));
  take(r.stride_b, sizeof(StrideB));
  take(r.stride_d, sizeof(StrideD));
  r.bytes = off;
  return r;
}

__global__ void prep_groups_kernel(GroupArrays out, const int64_t* __restrict__ ends, int num_groups, Segments segs,
                                   const Element* a, Element* d, int n, int k) {
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= num_groups) return;
  const int64_t r0 = g == 0 ? 0 : ends[g - 1];
  const int64_t r1 = ends[g];
  int s = 0;
  while (s + 1 < segs.count && g >= segs.first_group[s + 1]) ++s;
  const int64_t expert = g - segs.first_group[s];
  out.problem[g] = make_shape(static_cast<int>(r1 > r0 ? r1 - r0 : 0), n, k);
  out.ptr_a[g] = a + r0 * k;
  out.ptr_b[g] = segs.base[s] + expert * n * k;
  out.ptr_d[g] = d + r0 * n;
  StrideA sa{};
  StrideB sb{};
  StrideD sd{};
  get<0>(sa) = k;  // row pitch of A
  get<0>(sb) = k;  // row pitch of an expert's [N, K] block
  get<0>(sd) = n;  // row pitch of D
  out.stride_a[g] = sa;
  out.stride_b[g] = sb;
  out.stride_d[g] = sd;
}

int sm_count_of_current_device(cudaError_t* err) {
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

typename Gemm::Arguments make_args(const GroupArrays& ga, int num_groups, int device, int sm_count) {
  typename Gemm::Arguments args;
  args.mode = cutlass::gemm::GemmUniversalMode::kGrouped;
  args.problem_shape = {num_groups, ga.problem, nullptr};  // sizes live only on the device
  args.mainloop = {ga.ptr_a, ga.stride_a, ga.ptr_b, ga.stride_b};
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
  args.hw_info.sm_count = sm_count;
  return args;
}

size_t cutlass_workspace_bytes(int num_groups, int sm_count) {
  GroupArrays ga = carve(nullptr, num_groups);
  return Gemm::get_workspace_size(make_args(ga, num_groups, 0, sm_count));
}

}  // namespace

bool grouped_gemm_bf16_available() { return true; }

cudaError_t grouped_gemm_bf16_workspace_size(int num_groups, size_t* bytes) {
  if (num_groups < 0 || bytes == nullptr) return cudaErrorInvalidValue;
  cudaError_t err = cudaSuccess;
  const int sms = sm_count_of_current_device(&err);
  if (err != cudaSuccess) return err;
  *bytes = carve(nullptr, num_groups).bytes + cutlass_workspace_bytes(num_groups, sms);
  return cudaSuccess;
}

cudaError_t grouped_gemm_bf16(const void* a, const int64_t* group_row_ends, int num_groups,
                              const void* const* b_segments, const int* segment_groups, int num_segments, void* d,
                              int64_t n, int64_t k, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  if (num_segments < 1 || num_segments > kMaxWeightSegments || num_groups < 0) return cudaErrorInvalidValue;
  if (n <= 0 || k <= 0 || n % kAlign || k % kAlign || n > INT32_MAX || k > INT32_MAX) return cudaErrorInvalidValue;
  if (num_groups == 0) return cudaSuccess;
  if (!aligned(a) || !aligned(d) || !aligned(workspace) || group_row_ends == nullptr) return cudaErrorInvalidValue;
  Segments segs{};
  segs.count = num_segments;
  for (int s = 0; s < num_segments; ++s) {
    if (segment_groups[s] < 0 || !aligned(b_segments[s]) || (segment_groups[s] > 0 && !b_segments[s]))
      return cudaErrorInvalidValue;
    segs.base[s] = static_cast<const Element*>(b_segments[s]);
    segs.first_group[s + 1] = segs.first_group[s] + segment_groups[s];
  }
  if (segs.first_group[num_segments] != num_groups) return cudaErrorInvalidValue;

  cudaError_t err = cudaSuccess;
  const int sms = sm_count_of_current_device(&err);
  if (err != cudaSuccess) return err;
  int device = 0;
  if ((err = cudaGetDevice(&device)) != cudaSuccess) return err;
  const GroupArrays ga = carve(workspace, num_groups);
  const size_t gemm_ws = cutlass_workspace_bytes(num_groups, sms);
  if (workspace == nullptr || workspace_bytes < ga.bytes + gemm_ws) return cudaErrorInvalidValue;

  constexpr int kThreads = 128;
  prep_groups_kernel<<<(num_groups + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
      ga, group_row_ends, num_groups, segs, static_cast<const Element*>(a), static_cast<Element*>(d),
      static_cast<int>(n), static_cast<int>(k));
  if ((err = cudaGetLastError()) != cudaSuccess) return err;

  Gemm gemm;
  const auto args = make_args(ga, num_groups, device, sms);
  void* gemm_workspace = static_cast<char*>(workspace) + ga.bytes;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return cudaErrorInvalidValue;
  if (gemm.initialize(args, gemm_workspace, stream) != cutlass::Status::kSuccess) return cudaErrorLaunchFailure;
  if (gemm.run(stream) != cutlass::Status::kSuccess) {
    err = cudaGetLastError();
    return err != cudaSuccess ? err : cudaErrorLaunchFailure;
  }
  return cudaGetLastError();
}

}  // namespace dwdp

#endif  // DWDP_WITH_CUTLASS
