// The prefetch slot ring without CUDA: which layer is pulled into which slot, and when.
// Mirrors tensorrt_llm_dwdp/prefetch/prefetcher.py (Prefetcher) step for step, same order rules and error
// sentences, so a CPU test can drive both and compare. The CUDA side (context.h) turns each returned Pull into
// "copy stream waits compute_done[slot], issue the plan, record fetch_done[slot]".
#pragma once

#include <stdexcept>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace dwdp {

// The host called the ring out of order (skipped a layer, forgot begin_step...).
class ProtocolError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

struct Pull {
  int layer;
  int slot;
};

struct Acquired {
  int slot;
  bool fresh;  // true if this acquire consumed a new pull (false when the slot kept its layer)
};

struct Released {
  int slot;        // the slot the layer read (record compute_done here)
  bool has_pull;   // whether a pull must now be issued into it
  Pull pull;       // valid when has_pull
};

class SlotRing {
 public:
  // Throws std::invalid_argument unless num_layers >= 1 and num_slots >= 1.
  SlotRing(int num_layers, int num_slots);

  // Pulls of layers 0..min(D, L)-1 not yet in flight, in order, into free slots.
  std::vector<Pull> begin_step();
  Acquired acquire(int layer);
  Released release(int layer);
  void end_step();
  // Ends a step that failed part-way (a host's forward raised) and empties the ring, as Prefetcher.abort_step
  // does: returns the slot of a layer acquired but never released (-1 if none), whose compute_done the caller
  // records before it drains the pulls in flight.
  int abort_step();

  int num_layers() const { return num_layers_; }
  int num_slots() const { return num_slots_; }
  bool in_step() const { return in_step_; }
  int next_layer() const { return next_layer_; }
  // Slot the layer's last issued pull went to, or -1.
  int slot_of(int layer) const;

 private:
  Pull issue(int layer, int slot);

  int num_layers_, num_slots_;
  std::unordered_map<int, int> slot_of_;
  std::vector<int> free_;
  int next_layer_ = 0;
  bool in_step_ = false;
  std::unordered_set<int> unread_;
};

}  // namespace dwdp
