// Framework-free copy plans: byte ranges pulled from peer shards into a prefetch slot.
// Built once at setup; issuing one costs one cudaMemcpyAsync per slice and no allocation.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
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
  cudaError_t issue(void* dst_base, cudaStream_t stream) const;

  size_t size() const { return slices_.size(); }
  uint64_t nbytes() const;

 private:
  std::vector<CopySlice> slices_;
};

}  // namespace dwdp
