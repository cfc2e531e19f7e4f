"""The prefetch protocol: a ring of slots, one layer's pull in flight ahead of compute.

Engine-agnostic: a copy engine (CPU thread or CUDA stream) supplies issue / wait_fetch /
record_compute_done; this class decides which layer goes into which slot and when.

Order, with D slots and L MoE layers per step (layers numbered 0..L-1):
  * begin_step issues any of layers 0..D-1 not yet in flight, into the free slots;
  * acquire(l) makes compute wait for layer l's own pull, and nothing else;
  * release(l) records that layer l's MoE is done and only then issues the pull of layer
    (l + D) mod L into the slot l just freed; layers past the end wrap to the next step,
    so its first layers load behind this step's last ones. With L <= D every layer keeps
    its own slot and is pulled once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Set

from .plan import LayerCopyPlan


class DwdpProtocolError(RuntimeError):
    """The host called the hooks out of order (e.g. skipped a layer or forgot begin_step)."""


@dataclass(frozen=True)
class Acquired:
    slot: int
    wait: Any  # the engine's wait record; engine.seconds(wait) reads it
    fresh: bool  # True if this acquire consumed a new pull (False when the slot kept its layer)


class Prefetcher:
    def __init__(self, engine, plans: Sequence[LayerCopyPlan], num_slots: int):
        self.engine, self.plans, self.num_slots = engine, list(plans), num_slots
        self.num_layers = len(self.plans)
        self.slot_of: Dict[int, int] = {}  # layer -> slot its (last issued) pull went to
        self._free: List[int] = list(range(num_slots))
        self._next_layer = 0  # the layer the host must acquire next
        self._in_step = False
        self._unread: Set[int] = set()  # layers pulled but not yet acquired

    @property
    def in_step(self) -> bool:
        return self._in_step

    def _issue(self, layer: int, slot: int) -> None:
        self.engine.issue(self.plans[layer], slot)
        self.slot_of[layer] = slot
        self._unread.add(layer)

    def begin_step(self) -> None:
        if self._in_step:
            raise DwdpProtocolError("begin_step called twice without end_step")
        self._in_step, self._next_layer = True, 0
        for layer in range(min(self.num_slots, self.num_layers)):
            if layer not in self.slot_of:
                self._issue(layer, self._free.pop(0))

    def acquire(self, layer: int) -> Acquired:
        """Compute waits for layer's pull, and only for it."""
        if not self._in_step:
            raise DwdpProtocolError(f"layer {layer} requested outside a step: call begin_step first")
        if layer != self._next_layer:
            raise DwdpProtocolError(f"MoE layer {layer} requested but layer {self._next_layer} is next: "
                                    "DWDP layers must run in order, each once per step")
        slot = self.slot_of[layer]
        fresh = layer in self._unread
        self._unread.discard(layer)
        return Acquired(slot, self.engine.wait_fetch(slot), fresh)

    def release(self, layer: int) -> None:
        if layer != self._next_layer:
            raise DwdpProtocolError(f"layer_done({layer}) but layer {self._next_layer} is running")
        slot = self.slot_of[layer]
        self.engine.record_compute_done(slot)
        self._next_layer += 1
        if self.num_layers <= self.num_slots:
            return  # every layer owns a slot; nothing to refill
        del self.slot_of[layer]
        self._issue((layer + self.num_slots) % self.num_layers, slot)

    def abort_step(self) -> None:
        """End a step that failed part-way: free the slot of a layer acquired but never released, let every
        pull in flight finish, and start the next step from an empty ring. Safe outside a step too."""
        if self._in_step and self._next_layer in self.slot_of and self._next_layer not in self._unread:
            self.engine.record_compute_done(self.slot_of[self._next_layer])
        self.engine.synchronize()
        self.slot_of, self._unread = {}, set()
        self._free = list(range(self.num_slots))
        self._in_step, self._next_layer = False, 0

    def end_step(self) -> None:
        if not self._in_step:
            raise DwdpProtocolError("end_step without begin_step")
        if self._next_layer != self.num_layers:
            raise DwdpProtocolError(f"end_step after {self._next_layer} of {self.num_layers} MoE layers")
        self._in_step = False
