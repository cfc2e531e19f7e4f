"""Per-layer copy plans: what bytes to copy from which peer, in which order. Pure arithmetic.

Built once at setup. Each expert pull becomes one byte range per weight tensor; ranges
are cut into slices of at most slice_bytes and interleaved round-robin across source
peers, starting at a peer staggered by this rank, so ranks of a group do not all hit
the same owner's copy engines at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from ..layout import BlockLayout, ShardLayout
from ..placement import FetchPlan


@dataclass(frozen=True)
class CopySlice:
    """Copy nbytes from byte src_offset of peer `source`'s shard to byte dst_offset of a slot."""

    source: int
    src_offset: int
    dst_offset: int
    nbytes: int


@dataclass(frozen=True)
class LayerCopyPlan:
    layer: int
    slices: Tuple[CopySlice, ...]

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.slices)

    def bytes_per_source(self) -> Dict[int, int]:
        out: Dict[int, int] = {}
        for s in self.slices:
            out[s.source] = out.get(s.source, 0) + s.nbytes
        return out


def _cut(source: int, src: int, dst: int, n: int, slice_bytes: int) -> List[CopySlice]:
    return [CopySlice(source, src + o, dst + o, min(slice_bytes, n - o)) for o in range(0, n, slice_bytes)]


def _merge_adjacent(ranges: List[Tuple[int, int, int, int]]) -> List[Tuple[int, int, int, int]]:
    """Join (source, src, dst, n) ranges that continue each other in both buffers."""
    out: List[Tuple[int, int, int, int]] = []
    for r in sorted(ranges, key=lambda t: (t[0], t[1])):
        if out and out[-1][0] == r[0] and out[-1][1] + out[-1][3] == r[1] and out[-1][2] + out[-1][3] == r[2]:
            p = out[-1]
            out[-1] = (p[0], p[1], p[2], p[3] + r[3])
        else:
            out.append(r)
    return out


def build_layer_plan(
    fetch: FetchPlan,
    layer: int,
    source_layouts: Sequence[ShardLayout],
    source_rows: Sequence[Dict[int, int]],
    slot_block: BlockLayout,
    slice_bytes: int,
) -> LayerCopyPlan:
    """Copy plan for MoE layer `layer` of the rank that owns `fetch`.

    source_layouts[r] / source_rows[r]: shard layout of group rank r and its expert -> row map.
    slot_block: layout of the destination prefetch slot (rows = FetchPlan slot rows).
    """
    ranges = []
    for pull in fetch.pulls:
        src_layout = source_layouts[pull.source]
        base = src_layout.layer_offset(layer)
        src_rows = src_layout.block.expert_ranges(source_rows[pull.source][pull.expert])
        dst_rows = slot_block.expert_ranges(pull.slot_row)
        for (s_off, n), (d_off, n2) in zip(src_rows, dst_rows):
            assert n == n2, "source and slot disagree on an expert tensor's size"
            ranges.append((pull.source, base + s_off, d_off, n))
    per_source: Dict[int, List[CopySlice]] = {}
    for src, s_off, d_off, n in _merge_adjacent(ranges):
        per_source.setdefault(src, []).extend(_cut(src, s_off, d_off, n, slice_bytes))
    group_size = len(source_layouts)
    return LayerCopyPlan(layer, tuple(round_robin(per_source, fetch.rank, group_size)))


def round_robin(per_source: Dict[int, List[CopySlice]], rank: int, group_size: int) -> List[CopySlice]:
    """Interleave slices one per source in turn, starting at the first source after `rank`.

    Staggering the start by rank spreads the group's first slices over all owners.
    """
    sources = sorted(per_source, key=lambda s: (s - rank - 1) % group_size)
    queues = [per_source[s] for s in sources]
    longest = max((len(q) for q in queues), default=0)
    return [q[i] for i in range(longest) for q in queues if i < len(q)]
