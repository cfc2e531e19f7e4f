// Framework-free copy plans: byte ranges pulled from peer shards into a prefetch slot.
// Built once at setup; issuing one costs one cudaMemcpyAsync per slice and no allocation.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace dwdp {

struct CopySlice {
  uintptr_t src;        // absolute source address (a mapped peer shard or pinned host memory)
  uint64_t dst_offset;  // bytes from the start of the destination slot
  uint64_t nbytes;
};

class CopyPlan {
 public:
  // Throws std::invalid_argument on a null source or an empty slice.
  explicit CopyPlan(std::vector<CopySlice> slices);

  // Issues every slice on `stream` into the slot at `dst_base`; returns the first CUDA error.
  // batched: one cudaMemcpyBatchAsync call (CUDA >= 12.8, not on the legacy default stream)
  // instead of one cudaMemcpyAsync per slice; falls back to the latter where unavailable.
  cudaError_t issue(void* dst_base, cudaStream_t stream, bool batched = true) const;

  // Whether `issue(..., batched=true)` can use cudaMemcpyBatchAsync in this build.
  static bool batch_supported();

  // Captures the per-slice pull into the slot at `dst_base` as a CUDA graph (once per slot), so that
  // `launch` issues the whole pull with one cudaGraphLaunch: host time independent of the slice count's
  // API calls, and no Python in between.
  cudaError_t capture(void* dst_base);
  cudaError_t launch(void* dst_base, cudaStream_t stream) const;

  ~CopyPlan();

  size_t size() const { return slices_.size(); }
  uint64_t nbytes() const;

 private:
  cudaError_t issue_each(char* dst, cudaStream_t stream) const;

  std::vector<CopySlice> slices_;
  std::vector<const void*> srcs_;
  std::vector<size_t> sizes_;
  // Destination pointer arrays per slot base (a layer fills one of a few slots).
  mutable std::mutex mu_;
  mutable std::unordered_map<uintptr_t, std::vector<void*>> dsts_;
  std::unordered_map<uintptr_t, cudaGraphExec_t> graphs_;  // per slot base, written by capture only
};

}  // namespace dwdp
