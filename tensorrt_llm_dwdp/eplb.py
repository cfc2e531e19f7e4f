"""Expert-parallel load balancing (EPLB) for the DEP baseline: redundant replicas of hot experts.

DeepSeek's EPLB (github.com/deepseek-ai/EPLB, `balanced_packing` / `replicate_experts`), as TensorRT-LLM's
MoE load balancer also does: from each expert's load (tokens routed to it, measured), give the heaviest
experts extra replicas, then pack the replicas onto ranks so that every rank holds the same number of
slots and the loads are as even as a greedy packing makes them. A token of an expert goes to one of its
active replicas, round robin, so an expert's load splits evenly over them. A slot that no replica can use
without making the busiest rank busier holds a spare copy that takes no tokens (so EPLB is never worse
than the placement without it).

Pure functions over numbers: no torch, no devices (the simulator can use them too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Sequence, Tuple


@dataclass(frozen=True)
class SlotPlacement:
    """slots[r]: the expert in each of rank r's slots (every rank the same number of slots). Slot p of the
    flat list (rank p // S, local slot p % S) holds a replica; `spare` lists the flat slots whose copy takes no
    tokens. Invariant: every expert has at least one active replica, and no rank holds an expert twice."""

    num_experts: int
    slots: Tuple[Tuple[int, ...], ...]
    spare: FrozenSet[int] = frozenset()

    def __post_init__(self):
        per = {len(s) for s in self.slots}
        if len(per) != 1:
            raise ValueError(f"slot placement: ranks hold {sorted(per)} slots; every rank must hold the same number")
        if any(len(set(s)) != len(s) for s in self.slots):
            raise ValueError("slot placement: a rank holds an expert twice")
        active = {e for e, spare in self._flat() if not spare}
        if active != set(range(self.num_experts)):
            raise ValueError(f"slot placement: experts {sorted(set(range(self.num_experts)) - active)} have no "
                             "active replica")

    def _flat(self):
        per = self.slots_per_rank
        return [(e, r * per + i in self.spare) for r, s in enumerate(self.slots) for i, e in enumerate(s)]

    @property
    def world(self) -> int:
        return len(self.slots)

    @property
    def slots_per_rank(self) -> int:
        return len(self.slots[0])

    def replicas(self) -> Dict[int, List[int]]:
        """Expert -> the flat slot ids of its active replicas, in rank order (what a token is routed to)."""
        out: Dict[int, List[int]] = {e: [] for e in range(self.num_experts)}
        for p, (e, spare) in enumerate(self._flat()):
            if not spare:
                out[e].append(p)
        return out

    def rank_loads(self, load: Sequence[float]) -> List[float]:
        """Each rank's load when every expert's load splits evenly over its active replicas."""
        return _loads(load, [[(e, p in self.spare) for p, e in enumerate(s, r * self.slots_per_rank)]
                             for r, s in enumerate(self.slots)])


# Internally a rank's slots are a list of (expert, spare) pairs.
Slots = List[List[Tuple[int, bool]]]


def _counts(num_experts: int, slots: Slots) -> List[int]:
    count = [0] * num_experts
    for s in slots:
        for e, spare in s:
            count[e] += not spare
    return count


def _loads(load: Sequence[float], slots: Slots) -> List[float]:
    count = _counts(len(load), slots)
    return [sum(load[e] / count[e] for e, spare in s if not spare) for s in slots]


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


def _spare_for(rank_slots: List[Tuple[int, bool]], num_experts: int) -> Tuple[int, bool]:
    held = {e for e, _ in rank_slots}
    return next(e for e in range(num_experts) if e not in held), True


def _pack(load: Sequence[float], count: Sequence[int], world: int, slots_per_rank: int) -> Slots:
    """Replicas heaviest first, each to the least-loaded rank with a free slot that does not hold its expert;
    a replica no such rank can take becomes a spare copy of another expert there."""
    items = sorted(((load[e] / count[e], e) for e in range(len(load)) for _ in range(count[e])),
                   key=lambda t: (-t[0], t[1]))
    slots: Slots = [[] for _ in range(world)]
    loads = [0.0] * world
    for share, e in items:
        free = [r for r in range(world) if len(slots[r]) < slots_per_rank]
        apart = [r for r in free if all(e != f for f, _ in slots[r])]
        if apart:
            r = min(apart, key=lambda q: (loads[q], q))
            slots[r].append((e, False))
            loads[r] += share
        else:  # e already sits on every rank with room: one replica fewer for e
            r = min(free, key=lambda q: (loads[q], q))
            slots[r].append(_spare_for(slots[r], len(load)))
    return slots


def fill_slots(load: Sequence[float], base: Slots, slots_per_rank: int) -> Slots:
    """`base` (fewer slots per rank) with each free slot given the replica that leaves the busiest rank least
    busy, or a spare copy where every replica would make it busier."""
    slots = [list(s) for s in base]
    world = len(slots)
    while any(len(s) < slots_per_rank for s in slots):
        loads, count = _loads(load, slots), _counts(len(load), slots)
        held = [{e for e, _ in mine} for mine in slots]
        active = [{q for q in range(world) if (e, False) in slots[q]} for e in range(len(load))]
        best = None
        for e in range(len(load)):
            # e's active holders give up share L/c - L/(c+1) each; the rank that takes a replica carries L/(c+1)
            drop = load[e] / count[e] - load[e] / (count[e] + 1)
            adj = [loads[q] - drop if q in active[e] else loads[q] for q in range(world)]
            first = max(range(world), key=adj.__getitem__)  # the busiest other rank, whichever r takes it
            second = max((adj[q] for q in range(world) if q != first), default=float("-inf"))
            for r in range(world):
                if len(slots[r]) == slots_per_rank or e in held[r]:
                    continue
                peak = max(loads[r] + load[e] / (count[e] + 1), second if r == first else adj[first])
                if best is None or (peak, r, e) < best:
                    best = (peak, r, e)
        _, r, e = best
        slots[r].append((e, False) if best[0] <= max(loads) else _spare_for(slots[r], len(load)))
    return slots


def eplb_placement(load: Sequence[float], world: int, slots_per_rank: int) -> SlotPlacement:
    """Replicas of hot experts over `world` ranks of `slots_per_rank` slots each, from per-expert `load`.

    DeepSeek's greedy (replicate the heaviest, then pack heaviest-first onto the least-loaded rank), and, where
    it packs worse, plain DEP's contiguous placement with its free slots filled greedily (spare copies where a
    replica would not help): the busiest rank never carries more than without EPLB when the experts split
    evenly over the ranks."""
    _check(load, world, slots_per_rank)
    num_experts = len(load)
    greedy = _pack(load, _replicate(load, world * slots_per_rank, world), world, slots_per_rank)
    candidates = [greedy]
    if num_experts % world == 0:
        plain = [[(e, False) for e in s] for s in contiguous_slots(num_experts, world).slots]
        candidates.append(fill_slots(load, plain, slots_per_rank))
    best = min(candidates, key=lambda s: max(_loads(load, s)))
    return SlotPlacement(num_experts, tuple(tuple(e for e, _ in s) for s in best),
                         frozenset(r * slots_per_rank + i for r, s in enumerate(best) for i, (_, spare) in enumerate(s)
                                   if spare))
