#include "dwdp/copy_plan.h"

#include <stdexcept>
#include <utility>

namespace dwdp {

CopyPlan::CopyPlan(std::vector<CopySlice> slices) : slices_(std::move(slices)) {
  srcs_.reserve(slices_.size());
  sizes_.reserve(slices_.size());
  for (const CopySlice& s : slices_) {
    if (s.src == 0 || s.nbytes == 0) throw std::invalid_argument("CopyPlan: null source or empty slice");
    srcs_.push_back(reinterpret_cast<const void*>(s.src));
    sizes_.push_back(static_cast<size_t>(s.nbytes));
  }
}

bool CopyPlan::batch_supported() {
#if CUDART_VERSION >= 12080
  return true;
#else
  return false;
#endif
}

cudaError_t CopyPlan::issue_each(char* dst, cudaStream_t stream) const {
  for (const CopySlice& s : slices_) {
    // cudaMemcpyDefault: the source may be IPC-mapped device memory or pinned host memory.
    cudaError_t err = cudaMemcpyAsync(dst + s.dst_offset, reinterpret_cast<const void*>(s.src), s.nbytes,
                                      cudaMemcpyDefault, stream);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

cudaError_t CopyPlan::issue(void* dst_base, cudaStream_t stream, bool batched) const {
  if (dst_base == nullptr) return cudaErrorInvalidValue;
  auto* dst = static_cast<char*>(dst_base);
  if (slices_.empty()) return cudaSuccess;
#if CUDART_VERSION >= 12080
  if (batched && stream != nullptr) {
    std::vector<void*>* dsts;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = dsts_.find(reinterpret_cast<uintptr_t>(dst_base));
      if (it == dsts_.end()) {
        std::vector<void*> v;
        v.reserve(slices_.size());
        for (const CopySlice& s : slices_) v.push_back(dst + s.dst_offset);
        it = dsts_.emplace(reinterpret_cast<uintptr_t>(dst_base), std::move(v)).first;
      }
      dsts = &it->second;
    }
    cudaMemcpyAttributes attr{};
    attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
    attr.flags = cudaMemcpyFlagPreferOverlapWithCompute;
    size_t attr_idx = 0;
#if CUDART_VERSION >= 13000
    return cudaMemcpyBatchAsync(dsts->data(), srcs_.data(), sizes_.data(), slices_.size(), &attr, &attr_idx, 1,
                                stream);
#else
    size_t fail_idx = 0;
    return cudaMemcpyBatchAsync(dsts->data(), const_cast<void**>(srcs_.data()), const_cast<size_t*>(sizes_.data()),
                                slices_.size(), &attr, &attr_idx, 1, &fail_idx, stream);
#endif
  }
#endif
  return issue_each(dst, stream);
}

cudaError_t CopyPlan::capture(void* dst_base) {
  if (dst_base == nullptr) return cudaErrorInvalidValue;
  const auto key = reinterpret_cast<uintptr_t>(dst_base);
  if (graphs_.count(key)) return cudaSuccess;
  cudaStream_t s = nullptr;
  cudaError_t err = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
  if (err != cudaSuccess) return err;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  // NOTE: thread-local capture mode: other threads may keep issuing CUDA calls while this one captures.
  err = cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
  if (err == cudaSuccess) {
    const cudaError_t issued = issue_each(static_cast<char*>(dst_base), s);
    err = cudaStreamEndCapture(s, &graph);
    if (issued != cudaSuccess) err = issued;
  }
  if (err == cudaSuccess) err = cudaGraphInstantiate(&exec, graph, 0);
  if (graph != nullptr) cudaGraphDestroy(graph);
  cudaStreamDestroy(s);
  if (err != cudaSuccess) return err;
  graphs_[key] = exec;
  return cudaSuccess;
}

cudaError_t CopyPlan::launch(void* dst_base, cudaStream_t stream) const {
  auto it = graphs_.find(reinterpret_cast<uintptr_t>(dst_base));
  if (it == graphs_.end()) return cudaErrorInvalidValue;  // capture(dst_base) first
  return cudaGraphLaunch(it->second, stream);
}

CopyPlan::~CopyPlan() {
  for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
}

uint64_t CopyPlan::nbytes() const {
  uint64_t n = 0;
  for (const CopySlice& s : slices_) n += s.nbytes;
  return n;
}

}  // namespace dwdp
