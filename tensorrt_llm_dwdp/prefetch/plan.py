"""Per-layer copy plans: what bytes to copy from which peer's piece, in which order. Pure arithmetic.

Built once at setup. Each expert pull becomes one byte range per pooled weight tensor, from the owner's
shard piece that holds the expert to the expert's place in the layer's composite region (which maps the
slot's pieces there). Ranges of consecutive experts merge; ranges are cut into slices of at most
slice_bytes and interleaved round-robin across source peers, starting at a peer staggered by this rank,
so ranks of a group do not all hit the same owner's copy engines at once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from ..layout import CompositeLayout
from ..placement import FetchPlan


@dataclass(frozen=True)
class CopySlice:
    """Copy nbytes from byte src_offset of piece `piece` of peer `source`'s shard to byte dst_offset of a
    layer's composite region."""

    source: int
    piece: int
    src_offset: int
    dst_offset: int
    nbytes: int


@dataclass(frozen=True)
class LayerCopyPlan:
    layer: int
    slices: Tuple[CopySlice, ...]

    @functools.cached_property
    def nbytes(self) -> int:
        """Computed once: the hooks read it on every layer (hundreds of slices in a DeepSeek-V3 pull)."""
        return sum(s.nbytes for s in self.slices)


def shard_piece_index(layout: CompositeLayout, local: Sequence[int], layer: int, tensor: str, expert: int) -> Tuple[int, int]:
    """(index in the owner's shard piece list, byte offset in that piece) of `expert`'s tensor `tensor` in MoE
    layer `layer`, for an owner holding `local`. The shard lists layout.pieces(local) once per layer."""
    pieces = layout.pieces(local)
    for i, p in enumerate(pieces):
        if p.tensor == tensor and p.first <= expert < p.first + p.count:
            return layer * len(pieces) + i, (expert - p.first) * layout.stride(tensor)
    raise ValueError(f"expert {expert} is not among the owner's experts")


def build_layer_plan(fetch: FetchPlan, layer: int, layout: CompositeLayout, locals_: Sequence[Sequence[int]],
                     slice_bytes: int) -> LayerCopyPlan:
    """Copy plan for MoE layer `layer` of the rank that owns `fetch`; locals_[r]: experts group rank r holds.

    Each expert moves `stride` bytes (its padding too), so runs of consecutive experts merge into one range."""
    ranges = []
    for pull in fetch.pulls:
        for spec in layout.specs.pooled:
            piece, src = shard_piece_index(layout, locals_[pull.source], layer, spec.name, pull.expert)
            dst, _ = layout.expert_range(spec.name, pull.expert)
            ranges.append((pull.source, piece, src, dst, layout.stride(spec.name)))
    per_source: Dict[int, List[CopySlice]] = {}
    for src, piece, s_off, d_off, n in _merge_adjacent(ranges):
        per_source.setdefault(src, []).extend(
            CopySlice(src, piece, s_off + o, d_off + o, min(slice_bytes, n - o)) for o in range(0, n, slice_bytes))
    return LayerCopyPlan(layer, tuple(round_robin(per_source, fetch.rank, len(locals_))))


def _merge_adjacent(ranges: List[Tuple[int, int, int, int, int]]) -> List[Tuple[int, int, int, int, int]]:
    """Join (source, piece, src, dst, n) ranges that continue each other in both the piece and the region."""
    out: List[Tuple[int, int, int, int, int]] = []
    for r in sorted(ranges, key=lambda t: (t[0], t[1], t[2])):
        if out and out[-1][:2] == r[:2] and out[-1][2] + out[-1][4] == r[2] and out[-1][3] + out[-1][4] == r[3]:
            p = out[-1]
            out[-1] = (*p[:4], p[4] + r[4])
        else:
            out.append(r)
    return out


def round_robin(per_source: Dict[int, List[CopySlice]], rank: int, group_size: int) -> List[CopySlice]:
    """Interleave slices one per source in turn, starting at the first source after `rank`.

    Staggering the start by rank spreads the group's first slices over all owners.
    """
    sources = sorted(per_source, key=lambda s: (s - rank - 1) % group_size)
    queues = [per_source[s] for s in sources]
    longest = max((len(q) for q in queues), default=0)
    return [q[i] for i in range(longest) for q in queues if i < len(q)]
