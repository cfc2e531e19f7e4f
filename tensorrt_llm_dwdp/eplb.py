"""Expert-parallel load balancing (EPLB) for the DEP baseline: redundant replicas of hot experts.

DeepSeek's EPLB (github.com/deepseek-ai/EPLB, `balanced_packing` / `replicate_experts`), as TensorRT-LLM's
MoE load balancer also does: from each expert's load (tokens routed to it, measured), give the heaviest
experts extra replicas, then pack the replicas onto ranks so that every rank holds the same number of
slots and the loads are as even as a greedy packing makes them. A token of an expert goes to one of its
replicas, round robin, so an expert's load splits evenly over its replicas.

Pure functions over numbers: no torch, no devices (the simulator can use them too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple


@dataclass(frozen=True)
class SlotPlacement:
    """slots[r]: the expert in each of rank r's slots (every rank the same number of slots). Slot p of the
    flat list (rank p // S, local slot p % S) is a replica; every expert has at least one."""

    num_experts: int
    slots: Tuple[Tuple[int, ...], ...]

    def __post_init__(self):
        per = {len(s) for s in self.slots}
        if len(per) != 1:
            raise ValueError(f"slot placement: ranks hold {sorted(per)} slots; every rank must hold the same number")
        held = {e for s in self.slots for e in s}
        if held != set(range(self.num_experts)):
            raise ValueError(f"slot placement: experts {sorted(set(range(self.num_experts)) - held)} have no replica")

    @property
    def world(self) -> int:
        return len(self.slots)

    @property
    def slots_per_rank(self) -> int:
        return len(self.slots[0])

    def replicas(self) -> Dict[int, List[int]]:
        """Expert -> its flat slot ids, in rank order."""
        out: Dict[int, List[int]] = {e: [] for e in range(self.num_experts)}
        s = self.slots_per_rank
        for r, experts in enumerate(self.slots):
            for i, e in enumerate(experts):
                out[e].append(r * s + i)
        return out

    def rank_loads(self, load: Sequence[float]) -> List[float]:
        """Each rank's load when every expert's load splits evenly over its replicas."""
        count = [0] * self.num_experts
        for experts in self.slots:
            for e in experts:
                count[e] += 1
        return [sum(load[e] / count[e] for e in experts) for experts in self.slots]


def contiguous_slots(num_experts: int, world: int) -> SlotPlacement:
    """Plain DEP's placement: rank r holds experts [r*E/W, (r+1)*E/W), no replicas (E a multiple of W)."""
    if num_experts % world:
        raise ValueError(f"{num_experts} experts do not split evenly over {world} ranks")
    per = num_experts // world
    return SlotPlacement(num_experts, tuple(tuple(range(r * per, (r + 1) * per)) for r in range(world)))


def imbalance(loads: Sequence[float]) -> float:
    """Busiest over mean (1.0 when balanced or empty)."""
    mean = sum(loads) / len(loads) if loads else 0.0
    return max(loads) / mean if mean > 0 else 1.0


def _check(load: Sequence[float], world: int, slots_per_rank: int) -> None:
    num_experts = len(load)
    if world < 1 or slots_per_rank < 1:
        raise ValueError(f"EPLB: {world} ranks x {slots_per_rank} slots: both must be >= 1")
    if world * slots_per_rank < num_experts:
        raise ValueError(f"EPLB: {world} ranks x {slots_per_rank} slots cannot hold {num_experts} experts")
    if slots_per_rank > num_experts:
        raise ValueError(f"EPLB: {slots_per_rank} slots per rank for {num_experts} experts: a rank would hold one "
                         "expert twice")
    if any(not (math.isfinite(x) and x >= 0) for x in load):
        raise ValueError("EPLB: loads must be finite and >= 0")


def _replicate(load: Sequence[float], total_slots: int, world: int) -> List[int]:
    """Replica count per expert: one each, then the extra slots one by one to the expert whose replicas carry
    the most load (at most one replica per rank)."""
    count = [1] * len(load)
    for _ in range(total_slots - len(load)):
        e = max((i for i in range(len(load)) if count[i] < world), key=lambda i: (load[i] / count[i], -i))
        count[e] += 1
    return count


def _pack(load: Sequence[float], count: Sequence[int], world: int, slots_per_rank: int) -> List[List[int]]:
    """Replicas heaviest first, each to the least-loaded rank with a free slot that does not hold its expert."""
    items = sorted(((load[e] / count[e], e) for e in range(len(load)) for _ in range(count[e])),
                   key=lambda t: (-t[0], t[1]))
    slots: List[List[int]] = [[] for _ in range(world)]
    loads = [0.0] * world
    for share, e in items:
        free = [r for r in range(world) if len(slots[r]) < slots_per_rank]
        apart = [r for r in free if e not in slots[r]] or free
        r = min(apart, key=lambda q: (loads[q], q))
        slots[r].append(e)
        loads[r] += share
    return slots


def _fill(load: Sequence[float], base: List[List[int]], world: int, slots_per_rank: int) -> List[List[int]]:
    """`base` (fewer slots per rank) with each free slot given the replica that leaves the lowest busiest rank."""
    slots = [list(s) for s in base]
    while any(len(s) < slots_per_rank for s in slots):
        loads, count = _loads(load, slots), _counts(len(load), slots)
        best = None
        for r in range(world):
            if len(slots[r]) == slots_per_rank:
                continue
            for e in range(len(load)):
                if e in slots[r]:
                    continue
                # e's holders give up share L/c - L/(c+1) each; r takes L/(c+1)
                drop = load[e] / count[e] - load[e] / (count[e] + 1)
                peak = max(loads[q] + (load[e] / (count[e] + 1) if q == r else -drop if e in slots[q] else 0.0)
                           for q in range(world))
                if best is None or peak < best[0]:
                    best = (peak, r, e)
        if best is None:  # every rank with room holds every expert: slots_per_rank > num_experts, refused earlier
            raise AssertionError("EPLB: no expert left to replicate")
        slots[best[1]].append(best[2])
    return slots


def _counts(num_experts: int, slots: List[List[int]]) -> List[int]:
    count = [0] * num_experts
    for s in slots:
        for e in s:
            count[e] += 1
    return count


def _loads(load: Sequence[float], slots: List[List[int]]) -> List[float]:
    count = _counts(len(load), slots)
    return [sum(load[e] / count[e] for e in s if count[e]) for s in slots]


def eplb_placement(load: Sequence[float], world: int, slots_per_rank: int) -> SlotPlacement:
    """Replicas of hot experts over `world` ranks of `slots_per_rank` slots each, from per-expert `load`.

    DeepSeek's greedy (replicate the heaviest, then pack heaviest-first onto the least-loaded rank), and, where
    it packs worse, plain DEP's contiguous placement with its free slots filled greedily: the busiest rank never
    carries more than it would without EPLB when the experts split evenly over the ranks."""
    _check(load, world, slots_per_rank)
    num_experts = len(load)
    total = world * slots_per_rank
    greedy = _pack(load, _replicate(load, total, world), world, slots_per_rank)
    candidates = [greedy]
    if num_experts % world == 0:
        candidates.append(_fill(load, [list(s) for s in contiguous_slots(num_experts, world).slots], world,
                                slots_per_rank))
    best = min(candidates, key=lambda s: max(_loads(load, s)))
    return SlotPlacement(num_experts, tuple(tuple(s) for s in best))
