#include "dwdp/slot_ring.h"

namespace dwdp {

SlotRing::SlotRing(int num_layers, int num_slots) : num_layers_(num_layers), num_slots_(num_slots) {
  if (num_layers < 1 || num_slots < 1)
    throw std::invalid_argument("SlotRing needs num_layers >= 1 and num_slots >= 1, got " +
                                std::to_string(num_layers) + " and " + std::to_string(num_slots));
  for (int s = 0; s < num_slots; ++s) free_.push_back(s);
}

int SlotRing::slot_of(int layer) const {
  auto it = slot_of_.find(layer);
  return it == slot_of_.end() ? -1 : it->second;
}

Pull SlotRing::issue(int layer, int slot) {
  slot_of_[layer] = slot;
  unread_.insert(layer);
  return Pull{layer, slot};
}

std::vector<Pull> SlotRing::begin_step() {
  if (in_step_) throw ProtocolError("begin_step called twice without end_step");
  in_step_ = true;
  next_layer_ = 0;
  std::vector<Pull> pulls;
  const int first = num_slots_ < num_layers_ ? num_slots_ : num_layers_;
  for (int layer = 0; layer < first; ++layer) {
    if (slot_of_.count(layer)) continue;
    const int slot = free_.front();
    free_.erase(free_.begin());
    pulls.push_back(issue(layer, slot));
  }
  return pulls;
}

Acquired SlotRing::acquire(int layer) {
  if (!in_step_)
    throw ProtocolError("layer " + std::to_string(layer) + " requested outside a step: call begin_step first");
  if (layer != next_layer_)
    throw ProtocolError("MoE layer " + std::to_string(layer) + " requested but layer " + std::to_string(next_layer_) +
                        " is next: DWDP layers must run in order, each once per step");
  const int slot = slot_of_.at(layer);
  const bool fresh = unread_.erase(layer) > 0;
  return Acquired{slot, fresh};
}

Released SlotRing::release(int layer) {
  if (layer != next_layer_)
    throw ProtocolError("layer_done(" + std::to_string(layer) + ") but layer " + std::to_string(next_layer_) +
                        " is running");
  const int slot = slot_of_.at(layer);
  ++next_layer_;
  if (num_layers_ <= num_slots_) return Released{slot, false, Pull{-1, -1}};  // every layer owns a slot
  slot_of_.erase(layer);
  return Released{slot, true, issue((layer + num_slots_) % num_layers_, slot)};
}

void SlotRing::end_step() {
  if (!in_step_) throw ProtocolError("end_step without begin_step");
  if (next_layer_ != num_layers_)
    throw ProtocolError("end_step after " + std::to_string(next_layer_) + " of " + std::to_string(num_layers_) +
                        " MoE layers");
  in_step_ = false;
}

int SlotRing::abort_step() {
  int slot = -1;
  auto it = slot_of_.find(next_layer_);
  if (in_step_ && it != slot_of_.end() && !unread_.count(next_layer_)) slot = it->second;
  slot_of_.clear();
  unread_.clear();
  free_.clear();
  for (int s = 0; s < num_slots_; ++s) free_.push_back(s);
  in_step_ = false;
  next_layer_ = 0;
  return slot;
}

}  // namespace dwdp
