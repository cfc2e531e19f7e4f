#include "dwdp/copy_plan.h"

#include <stdexcept>
#include <utility>

namespace dwdp {

CopyPlan::CopyPlan(std::vector<CopySlice> slices) : slices_(std::move(slices)) {
  for (const CopySlice& s : slices_) {
    if (s.src == 0 || s.nbytes == 0) throw std::invalid_argument("CopyPlan: null source or empty slice");
  }
}

cudaError_t CopyPlan::issue(void* dst_base, cudaStream_t stream) const {
  if (dst_base == nullptr) return cudaErrorInvalidValue;
  auto* dst = static_cast<char*>(dst_base);
  for (const CopySlice& s : slices_) {
    // cudaMemcpyDefault: the source may be IPC-mapped device memory or pinned host memory.
    cudaError_t err = cudaMemcpyAsync(dst + s.dst_offset, reinterpret_cast<const void*>(s.src), s.nbytes,
                                      cudaMemcpyDefault, stream);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

uint64_t CopyPlan::nbytes() const {
  uint64_t n = 0;
  for (const CopySlice& s : slices_) n += s.nbytes;
  return n;
}

}  // namespace dwdp
