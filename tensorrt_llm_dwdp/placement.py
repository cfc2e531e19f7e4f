"""Which rank of a DWDP group owns which experts, and where each rank pulls the rest from.

Pure functions over integers: no memory, no devices. Ranks here are ranks within one
DWDP group (0 .. group_size - 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

from .config import DwdpConfig


@dataclass(frozen=True)
class Placement:
    """Expert ownership in one DWDP group.

    ranks[r] is the sorted tuple of expert ids that rank r holds in its local shard.
    Invariant: every expert in [0, num_experts) has at least one owner.
    """

    num_experts: int
    ranks: Tuple[Tuple[int, ...], ...]

    def __post_init__(self):
        ranks = tuple(tuple(sorted(r)) for r in self.ranks)
        object.__setattr__(self, "ranks", ranks)
        owned = set()
        for r, experts in enumerate(ranks):
            if len(set(experts)) != len(experts):
                raise ValueError(f"placement: rank {r} holds an expert twice: {experts}")
            if experts and not (0 <= experts[0] and experts[-1] < self.num_experts):
                raise ValueError(f"placement: rank {r} holds ids outside [0, {self.num_experts})")
            owned.update(experts)
        if len(owned) != self.num_experts:
            raise ValueError(f"placement: experts {sorted(set(range(self.num_experts)) - owned)} have no owner")

    @property
    def group_size(self) -> int:
        return len(self.ranks)

    def local_experts(self, rank: int) -> Tuple[int, ...]:
        return self.ranks[rank]

    def missing_experts(self, rank: int) -> Tuple[int, ...]:
        mine = set(self.ranks[rank])
        return tuple(e for e in range(self.num_experts) if e not in mine)

    def owners(self, expert: int) -> Tuple[int, ...]:
        return tuple(r for r, experts in enumerate(self.ranks) if expert in experts)

    @property
    def max_missing(self) -> int:
        """Experts the largest prefetch slot must hold."""
        return max(len(self.missing_experts(r)) for r in range(self.group_size))


def even_placement(num_experts: int, group_size: int) -> Placement:
    """Contiguous ranges; the first num_experts % group_size ranks get one expert more."""
    base, extra = divmod(num_experts, group_size)
    ranks, start = [], 0
    for r in range(group_size):
        n = base + (1 if r < extra else 0)
        ranks.append(tuple(range(start, start + n)))
        start += n
    return Placement(num_experts, tuple(ranks))


def redundant_placement(num_experts: int, group_size: int, experts_per_rank: int) -> Placement:
    """Each rank holds experts_per_rank consecutive experts (wrapping) from an evenly spaced start.

    Starts are floor(r * E / G) apart by at most ceil(E / G) <= experts_per_rank, so the
    ranges cover every expert; where experts_per_rank * G > E neighbouring ranges overlap.
    """
    if experts_per_rank * group_size < num_experts:
        raise ValueError("redundant_placement: experts_per_rank * group_size < num_experts")
    if experts_per_rank > num_experts:
        raise ValueError("redundant_placement: experts_per_rank > num_experts")
    ranks = []
    for r in range(group_size):
        start = (r * num_experts) // group_size
        ranks.append(tuple((start + i) % num_experts for i in range(experts_per_rank)))
    return Placement(num_experts, tuple(ranks))


def placement_from_config(config: DwdpConfig) -> Placement:
    if config.placement is not None:
        return Placement(config.num_experts, config.placement)
    if config.experts_per_rank is None:
        return even_placement(config.num_experts, config.group_size)
    return redundant_placement(config.num_experts, config.group_size, config.experts_per_rank)


@dataclass(frozen=True)
class ExpertPull:
    """Pull expert `expert` from rank `source` into row `slot_row` of the prefetch slot."""

    expert: int
    source: int
    slot_row: int


@dataclass(frozen=True)
class FetchPlan:
    """What one rank pulls for one layer: every missing expert exactly once."""

    rank: int
    layer: int
    pulls: Tuple[ExpertPull, ...]

    def pulls_per_source(self) -> Dict[int, int]:
        counts: Dict[int, int] = {}
        for p in self.pulls:
            counts[p.source] = counts.get(p.source, 0) + 1
        return counts


def fetch_plan(placement: Placement, rank: int, layer: int = 0) -> FetchPlan:
    """Assign each expert that `rank` lacks to one owner, balancing pulls over owners.

    Experts with one owner go to it. Experts with several go first to the least-loaded
    owner (ties rotate by rank + layer, so ranks and layers start on different owners),
    then pulls are moved along cost-reducing paths (owner A -> expert -> owner B with
    load(A) >= load(B) + 2) until none is left, which minimises the largest number of
    pulls from one owner. Slot rows follow missing_experts(rank).
    """
    if not 0 <= rank < placement.group_size:
        raise ValueError(f"fetch_plan: rank {rank} outside group of {placement.group_size}")
    g = placement.group_size
    missing = placement.missing_experts(rank)
    owners = {e: placement.owners(e) for e in missing}
    load = [0] * g
    src: Dict[int, int] = {}
    for e in missing:
        if len(owners[e]) == 1:
            src[e] = owners[e][0]
            load[src[e]] += 1
    for e in sorted((e for e in missing if len(owners[e]) > 1), key=lambda e: len(owners[e])):
        src[e] = min(owners[e], key=lambda o: (load[o], (o - rank - layer) % g))
        load[src[e]] += 1
    while _shift_one(src, owners, load):
        pass
    pulls = tuple(ExpertPull(expert=e, source=src[e], slot_row=row) for row, e in enumerate(missing))
    return FetchPlan(rank=rank, layer=layer, pulls=pulls)


def _shift_one(src: Dict[int, int], owners: Dict[int, Tuple[int, ...]], load: list) -> bool:
    """Move pulls along one path from a most-loaded owner to one with load <= max - 2."""
    top = max(load, default=0)
    for start in (o for o in range(len(load)) if load[o] == top):
        parent = {start: None}  # owner -> (previous owner, expert moved)
        frontier = [start]
        while frontier:
            nxt = []
            for o in frontier:
                for e, cur in src.items():
                    if cur != o:
                        continue
                    for t in owners[e]:
                        if t in parent:
                            continue
                        parent[t] = (o, e)
                        if load[t] <= top - 2:
                            load[start] -= 1
                            load[t] += 1
                            while parent[t] is not None:
                                prev, moved = parent[t]
                                src[moved] = t
                                t = prev
                            return True
                        nxt.append(t)
            frontier = nxt
    return False
