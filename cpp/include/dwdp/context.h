// The DWDP context of one process for hosts without Python on the forward path (the TensorRT plugin):
// per MoE layer and slot the composite expert tensors, per layer the copy plan, one copy stream, fetch/compute
// events per slot and the slot ring. Python builds it once (handles exchanged, shards filled, composite views
// mapped) and registers it under a context id; the plugin looks it up by that id. No MPI, no torch.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "dwdp/copy_plan.h"
#include "dwdp/slot_ring.h"

namespace dwdp {

// One layer's experts as seen through one slot: [E, ...] tensors whose expert e starts at base + e * stride
// (strides in elements of the tensor's dtype; dim 0 may be padded). Scales are null for BF16 experts.
struct ExpertPointers {
  const void* w13 = nullptr;        // [E, 2I, H]: gate rows, then up rows
  const void* w2 = nullptr;         // [E, H, I]
  const float* w13_scale = nullptr; // [E, 2I/128, H/128] fp32 (FP8 block-scaled only)
  const float* w2_scale = nullptr;  // [E, H/128, I/128] fp32
  int64_t w13_stride = 0, w2_stride = 0, w13_scale_stride = 0, w2_scale_stride = 0;
};

enum class IssueMode : int {
  kGraph = 0,     // each (layer, slot) pull captured once as a CUDA graph and replayed
  kBatched = 1,   // one cudaMemcpyBatchAsync per pull
  kPerSlice = 2,  // one cudaMemcpyAsync per slice
};

// How a host drives the steps. kExplicit: begin_step / end_step are called (as the Python hooks do).
// kImplicit: acquire(first layer) opens a step and release(last layer) closes it, for an engine that runs
// every MoE layer once per forward and has no per-step host call.
enum class StepMode : int { kExplicit = 0, kImplicit = 1 };

struct ContextSpec {
  int num_layers = 0;
  int num_slots = 0;
  int num_experts = 0;
  std::vector<ExpertPointers> views;              // [num_layers * num_slots], layer-major
  std::vector<std::shared_ptr<CopyPlan>> plans;   // [num_layers], null: nothing to pull for that layer
  std::vector<void*> slot_bases;                  // [num_slots]: destination base of each slot's pull
  IssueMode issue_mode = IssueMode::kGraph;
  StepMode step_mode = StepMode::kImplicit;
};

class DwdpContext {
 public:
  // Validates the spec (std::invalid_argument), creates the copy stream and events on the current device and,
  // in kGraph mode, captures every (layer, slot) pull.
  explicit DwdpContext(ContextSpec spec);
  ~DwdpContext();
  DwdpContext(const DwdpContext&) = delete;
  DwdpContext& operator=(const DwdpContext&) = delete;

  // Protocol calls; `stream` is the compute stream. They throw ProtocolError on misuse and std::runtime_error
  // on a CUDA error. acquire makes `stream` wait for the layer's own pull and returns the composite view.
  void begin_step();
  const ExpertPointers& acquire(int layer, cudaStream_t stream);
  void release(int layer, cudaStream_t stream);
  void end_step();

  // For hosts that report how long compute waited for each pull (the Python hooks, one native call per hook
  // call): acquire that also records timing events around the wait. `record` is -1 when not timed, else an id
  // for wait_seconds, which blocks until the wait has passed on the device, reads it and frees the id.
  struct Timed {
    int slot;
    bool fresh;
    int64_t record;
  };
  Timed acquire_timed(int layer, cudaStream_t stream, bool timed);
  double wait_seconds(int64_t record);
  // Ends a step that failed part-way: records compute_done of a slot acquired but not released on `stream`,
  // drains the pulls in flight and empties the ring (SlotRing::abort_step). Safe outside a step.
  void abort_step(cudaStream_t stream);
  bool in_step();

  int num_layers() const { return spec_.num_layers; }
  int num_experts() const { return spec_.num_experts; }
  // Pulls issued since creation (a CPU-visible count, for tests and metrics).
  int64_t pulls_issued() const { return pulls_issued_; }
  cudaStream_t copy_stream() const { return copy_stream_; }
  // Waits for every pull issued so far.
  void synchronize();

 private:
  void issue(const Pull& pull);

  ContextSpec spec_;
  SlotRing ring_;
  std::mutex mu_;  // NOTE: TensorRT may enqueue from several threads; the ring is one per process and layer order
  cudaStream_t copy_stream_ = nullptr;
  std::vector<cudaEvent_t> fetch_done_, compute_done_;
  std::vector<std::pair<cudaEvent_t, cudaEvent_t>> timers_;  // (before, after) the wait; grown on demand
  std::vector<int64_t> free_timers_;
  std::vector<bool> timer_busy_;
  int64_t pulls_issued_ = 0;
};

// Process-wide registry: the one place the Python side and the plugin (two shared objects) meet. Both link the
// core library, so they see the same table.
void register_context(int context_id, std::shared_ptr<DwdpContext> ctx);  // replaces an existing id
std::shared_ptr<DwdpContext> find_context(int context_id);               // null if absent
bool unregister_context(int context_id);
std::vector<int> registered_contexts();

}  // namespace dwdp
