#include "dwdp/context.h"

#include <map>
#include <stdexcept>
#include <string>

namespace dwdp {
namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

void validate(const ContextSpec& s) {
  auto bad = [](const std::string& what) { throw std::invalid_argument("DwdpContext: " + what); };
  if (s.num_layers < 1 || s.num_slots < 1 || s.num_experts < 1)
    bad("num_layers, num_slots and num_experts must be >= 1");
  if (s.views.size() != static_cast<size_t>(s.num_layers) * s.num_slots)
    bad("views must hold num_layers * num_slots entries (layer-major), got " + std::to_string(s.views.size()));
  if (s.plans.size() != static_cast<size_t>(s.num_layers))
    bad("plans must hold one entry per layer, got " + std::to_string(s.plans.size()));
  if (s.slot_bases.size() != static_cast<size_t>(s.num_slots))
    bad("slot_bases must hold one entry per slot, got " + std::to_string(s.slot_bases.size()));
  for (size_t i = 0; i < s.views.size(); ++i)
    if (s.views[i].w13 == nullptr || s.views[i].w2 == nullptr)
      bad("view " + std::to_string(i) + " (layer " + std::to_string(i / s.num_slots) + ", slot " +
          std::to_string(i % s.num_slots) + ") has a null w13 or w2");
  for (int l = 0; l < s.num_layers; ++l)
    if (s.plans[l])
      for (int k = 0; k < s.num_slots; ++k)
        if (s.slot_bases[k] == nullptr) bad("layer " + std::to_string(l) + " pulls into slot " + std::to_string(k) +
                                            " whose base is null");
}

std::mutex registry_mu;
std::map<int, std::shared_ptr<DwdpContext>>& registry() {
  static auto* table = new std::map<int, std::shared_ptr<DwdpContext>>();  // NOTE: never destroyed: no exit-order
  return *table;                                                            // teardown of CUDA objects
}

}  // namespace

DwdpContext::DwdpContext(ContextSpec spec) : spec_((validate(spec), std::move(spec))),
                                             ring_(spec_.num_layers, spec_.num_slots) {
  check(cudaStreamCreateWithFlags(&copy_stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  fetch_done_.resize(spec_.num_slots);
  compute_done_.resize(spec_.num_slots);
  for (int s = 0; s < spec_.num_slots; ++s) {
    check(cudaEventCreateWithFlags(&fetch_done_[s], cudaEventDisableTiming), "cudaEventCreate");
    check(cudaEventCreateWithFlags(&compute_done_[s], cudaEventDisableTiming), "cudaEventCreate");
  }
  if (spec_.issue_mode == IssueMode::kGraph)
    for (auto& plan : spec_.plans)
      if (plan)
        for (void* base : spec_.slot_bases) check(plan->capture(base), "CopyPlan::capture");
}

DwdpContext::~DwdpContext() {
  if (copy_stream_) cudaStreamSynchronize(copy_stream_);
  for (auto e : fetch_done_) cudaEventDestroy(e);
  for (auto e : compute_done_) cudaEventDestroy(e);
  for (auto& t : timers_) {
    cudaEventDestroy(t.first);
    cudaEventDestroy(t.second);
  }
  if (copy_stream_) cudaStreamDestroy(copy_stream_);
}

void DwdpContext::issue(const Pull& pull) {
  // A slot is refilled only after the MoE that read it is done; the MoE waits only for its own layer's pull.
  check(cudaStreamWaitEvent(copy_stream_, compute_done_[pull.slot], 0), "cudaStreamWaitEvent");
  const auto& plan = spec_.plans[pull.layer];
  if (plan) {
    void* base = spec_.slot_bases[pull.slot];
    switch (spec_.issue_mode) {
      case IssueMode::kGraph: check(plan->launch(base, copy_stream_), "CopyPlan::launch"); break;
      case IssueMode::kBatched: check(plan->issue(base, copy_stream_, true), "CopyPlan::issue"); break;
      case IssueMode::kPerSlice: check(plan->issue(base, copy_stream_, false), "CopyPlan::issue"); break;
    }
  }
  check(cudaEventRecord(fetch_done_[pull.slot], copy_stream_), "cudaEventRecord");
  ++pulls_issued_;
}

void DwdpContext::begin_step() {
  std::lock_guard<std::mutex> lock(mu_);
  for (const Pull& p : ring_.begin_step()) issue(p);
}

const ExpertPointers& DwdpContext::acquire(int layer, cudaStream_t stream) {
  const Timed t = acquire_timed(layer, stream, false);
  return spec_.views[static_cast<size_t>(layer) * spec_.num_slots + t.slot];
}

DwdpContext::Timed DwdpContext::acquire_timed(int layer, cudaStream_t stream, bool timed) {
  std::lock_guard<std::mutex> lock(mu_);
  if (spec_.step_mode == StepMode::kImplicit && layer == 0 && !ring_.in_step())
    for (const Pull& p : ring_.begin_step()) issue(p);
  const Acquired a = ring_.acquire(layer);
  int64_t record = -1;
  if (timed) {
    if (free_timers_.empty()) {  // every earlier record is still unread: one more pair
      std::pair<cudaEvent_t, cudaEvent_t> t{nullptr, nullptr};
      check(cudaEventCreate(&t.first), "cudaEventCreate");
      check(cudaEventCreate(&t.second), "cudaEventCreate");
      free_timers_.push_back(static_cast<int64_t>(timers_.size()));
      timers_.push_back(t);
      timer_busy_.push_back(false);
    }
    record = free_timers_.back();
    free_timers_.pop_back();
    timer_busy_[record] = true;
    check(cudaEventRecord(timers_[record].first, stream), "cudaEventRecord");
  }
  check(cudaStreamWaitEvent(stream, fetch_done_[a.slot], 0), "cudaStreamWaitEvent");
  if (timed) check(cudaEventRecord(timers_[record].second, stream), "cudaEventRecord");
  return Timed{a.slot, a.fresh, record};
}

double DwdpContext::wait_seconds(int64_t record) {
  if (record < 0) return 0.0;
  std::pair<cudaEvent_t, cudaEvent_t> t;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (record >= static_cast<int64_t>(timers_.size()) || !timer_busy_[record])
      throw std::invalid_argument("wait_seconds: record " + std::to_string(record) + " is not an unread wait");
    t = timers_[record];
  }
  check(cudaEventSynchronize(t.second), "cudaEventSynchronize");  // outside the lock: it blocks
  float ms = 0.0f;
  check(cudaEventElapsedTime(&ms, t.first, t.second), "cudaEventElapsedTime");
  std::lock_guard<std::mutex> lock(mu_);
  timer_busy_[record] = false;
  free_timers_.push_back(record);
  return ms / 1e3;
}

void DwdpContext::abort_step(cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(mu_);
  const int slot = ring_.abort_step();
  if (slot >= 0) check(cudaEventRecord(compute_done_[slot], stream), "cudaEventRecord");
  check(cudaStreamSynchronize(copy_stream_), "cudaStreamSynchronize");
}

bool DwdpContext::in_step() {
  std::lock_guard<std::mutex> lock(mu_);
  return ring_.in_step();
}

void DwdpContext::release(int layer, cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(mu_);
  const int slot = ring_.slot_of(layer);
  if (layer == ring_.next_layer() && slot >= 0)
    check(cudaEventRecord(compute_done_[slot], stream), "cudaEventRecord");
  const Released r = ring_.release(layer);  // throws on a layer out of order (the event record above is then moot)
  if (r.has_pull) issue(r.pull);
  if (spec_.step_mode == StepMode::kImplicit && layer == spec_.num_layers - 1) ring_.end_step();
}

void DwdpContext::end_step() {
  std::lock_guard<std::mutex> lock(mu_);
  ring_.end_step();
}

void DwdpContext::synchronize() { check(cudaStreamSynchronize(copy_stream_), "cudaStreamSynchronize"); }

void register_context(int context_id, std::shared_ptr<DwdpContext> ctx) {
  std::lock_guard<std::mutex> lock(registry_mu);
  registry()[context_id] = std::move(ctx);
}

std::shared_ptr<DwdpContext> find_context(int context_id) {
  std::lock_guard<std::mutex> lock(registry_mu);
  auto it = registry().find(context_id);
  return it == registry().end() ? nullptr : it->second;
}

bool unregister_context(int context_id) {
  std::lock_guard<std::mutex> lock(registry_mu);
  return registry().erase(context_id) > 0;
}

std::vector<int> registered_contexts() {
  std::lock_guard<std::mutex> lock(registry_mu);
  std::vector<int> ids;
  for (const auto& kv : registry()) ids.push_back(kv.first);
  return ids;
}

}  // namespace dwdp
