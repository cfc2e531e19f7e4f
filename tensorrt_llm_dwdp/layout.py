"""Byte layout of composite expert tensors. Pure arithmetic: no memory, no devices.

For each MoE layer a rank sees one region per prefetch slot: every pooled weight tensor (w13, w2) as one
`[E, *shape]` array, its own experts mapped in place from its shard and the missing ones mapped from the
slot's pieces. Virtual memory does the joining, and it maps whole allocations only, at the backend's
granularity (2 MiB on H200, a 4 KiB page on CPU ranks). So:

  * a piece is one allocation: (tensor, first expert, count) of one contiguous run of experts;
  * experts are `stride` bytes apart, stride chosen so that every run boundary of every rank of the group
    falls on the granularity (padding where it must, reported in `MemoryPlan`);
  * a region holds the tensors back to back, each at a granularity-aligned offset.

Small per-expert tensors (FP8 block scales) are not pooled: every rank holds all experts' copy of them.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

from .config import WeightDtype, is_fp8

ALIGN = 256  # smallest expert stride unit: keeps every expert 16-byte aligned for TMA and vector loads

_ITEMSIZE = {**{d.value: d.itemsize for d in WeightDtype}, "float64": 8}

FP8_BLOCK = 128  # DeepSeek-V3 weight scale block: 128 x 128


class W13Order(enum.Enum):
    """Row order of the fused gate/up weight w13 [2I, H]."""

    GATE_UP = "gate_up"  # w1 (gate) rows, then w3 (up): Hugging Face's order and this project's default
    UP_GATE = "up_gate"  # w3 (up) rows, then w1 (gate): TensorRT-LLM's `w3_w1_weight`


def torch_dtype(name: str):
    import torch  # NOTE: imported here so that this module (and the simulator using it) needs no torch
    return getattr(torch, name)


def _round_up(n: int, a: int) -> int:
    return -(-n // a) * a


@dataclass(frozen=True)
class ExpertTensorSpec:
    """One weight tensor of one expert: name, per-expert shape and dtype name."""

    name: str
    shape: Tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _ITEMSIZE[self.dtype]


@dataclass(frozen=True)
class ExpertSpecs:
    """pooled: composed per layer and pulled (w13, w2); replicated: small, on every rank (block scales)."""

    pooled: Tuple[ExpertTensorSpec, ...]
    replicated: Tuple[ExpertTensorSpec, ...] = ()

    @property
    def all(self) -> Tuple[ExpertTensorSpec, ...]:
        return self.pooled + self.replicated

    def __iter__(self):
        return iter(self.all)


def swiglu_expert_specs(hidden_size: int, intermediate_size: int, dtype: str) -> ExpertSpecs:
    """w13: [2I, H] (gate rows then up rows, or the reverse: W13Order); w2: [H, I]. y = w2 @ (silu(gate x) * up x).

    FP8 (WeightDtype.FP8) adds DeepSeek-V3 block scales, one fp32 per 128x128 block, in the layout of the checkpoints'
    weight_scale_inv: w13_scale [2I/128, H/128], w2_scale [H/128, I/128]."""
    pooled = (ExpertTensorSpec("w13", (2 * intermediate_size, hidden_size), dtype),
              ExpertTensorSpec("w2", (hidden_size, intermediate_size), dtype))
    if not is_fp8(dtype):
        return ExpertSpecs(pooled)
    if hidden_size % FP8_BLOCK or intermediate_size % FP8_BLOCK:
        raise ValueError(f"FP8 block-scaled experts need hidden ({hidden_size}) and intermediate "
                         f"({intermediate_size}) sizes that are multiples of {FP8_BLOCK}")
    h, i = hidden_size // FP8_BLOCK, intermediate_size // FP8_BLOCK
    return ExpertSpecs(pooled, (ExpertTensorSpec("w13_scale", (2 * i, h), "float32"),
                                ExpertTensorSpec("w2_scale", (h, i), "float32")))


def runs(experts: Sequence[int]) -> Tuple[Tuple[int, int], ...]:
    """Sorted expert ids -> (first, count) of each maximal run of consecutive ids."""
    out = []
    for e in sorted(experts):
        if out and out[-1][0] + out[-1][1] == e:
            out[-1][1] += 1
        else:
            out.append([e, 1])
    return tuple((f, n) for f, n in out)


@dataclass(frozen=True)
class Piece:
    """One allocation: experts [first, first + count) of pooled tensor `tensor`; `offset` in the region."""

    tensor: str
    first: int
    count: int
    offset: int
    nbytes: int  # allocation size: count * stride, rounded up to the granularity


@dataclass(frozen=True)
class CompositeLayout:
    """Where each pooled tensor and each expert lies in a region. Identical on every rank of a group, so an
    expert's offset inside a piece is the same in the owner's shard and in a puller's slot."""

    specs: ExpertSpecs
    num_experts: int
    granularity: int
    strides: Tuple[int, ...]  # bytes between experts, per pooled tensor
    offsets: Tuple[int, ...]  # region offset of each pooled tensor
    nbytes: int  # region size

    @classmethod
    def build(cls, specs: ExpertSpecs, num_experts: int, granularity: int,
              boundaries: Sequence[int]) -> "CompositeLayout":
        """boundaries: every expert index at which some rank's run starts or ends (0 and E may be included).
        A boundary b falls on the granularity iff b * stride is a multiple of it, i.e. iff stride is a multiple
        of granularity / gcd(granularity, b); one gcd over all boundaries gives the smallest such unit."""
        g = 0
        for b in boundaries:
            if 0 < b < num_experts:
                g = math.gcd(g, b)
        unit = granularity // math.gcd(granularity, g) if g else 1
        unit = unit * ALIGN // math.gcd(unit, ALIGN)
        strides, offsets, off = [], [], 0
        for s in specs.pooled:
            stride = _round_up(s.nbytes, unit)
            strides.append(stride)
            offsets.append(off)
            off += _round_up(num_experts * stride, granularity)
        return cls(specs, num_experts, granularity, tuple(strides), tuple(offsets), off)

    def index(self, name: str) -> int:
        return [s.name for s in self.specs.pooled].index(name)

    def stride(self, name: str) -> int:
        return self.strides[self.index(name)]

    def pieces(self, experts: Sequence[int]) -> Tuple[Piece, ...]:
        """The allocations that hold `experts` (a rank's local or missing ids), in (tensor, run) order."""
        out = []
        for i, s in enumerate(self.specs.pooled):
            for first, count in runs(experts):
                start = self.offsets[i] + first * self.strides[i]
                out.append(Piece(s.name, first, count, start, _round_up(count * self.strides[i], self.granularity)))
        return tuple(out)

    def expert_range(self, name: str, expert: int) -> Tuple[int, int]:
        """(region offset, nbytes) of one expert's pooled tensor `name`."""
        i = self.index(name)
        return self.offsets[i] + expert * self.strides[i], self.specs.pooled[i].nbytes

    @property
    def padding_bytes_per_expert(self) -> int:
        return sum(st - s.nbytes for st, s in zip(self.strides, self.specs.pooled))


@dataclass(frozen=True)
class MemoryPlan:
    """What one rank allocates: its shard, its slots, the replicated small tensors, and the padding among them."""

    shard_bytes: int
    slot_bytes: int  # all slots together
    replicated_bytes: int
    padding_bytes: int  # included in shard_bytes and slot_bytes
    duplicate_bytes: int = 0  # a second copy of the shard where the backend cannot map its export in place

    @property
    def total(self) -> int:
        return self.shard_bytes + self.slot_bytes + self.replicated_bytes + self.duplicate_bytes

    def describe(self) -> str:
        gib = 2 ** 30
        text = (f"shard {self.shard_bytes / gib:.2f} GiB, slots {self.slot_bytes / gib:.2f} GiB, replicated scales "
                f"{self.replicated_bytes / gib:.3f} GiB, padding {self.padding_bytes / gib:.3f} GiB")
        if self.duplicate_bytes:
            text += f", second copy of the shard {self.duplicate_bytes / gib:.2f} GiB"
        return text


def memory_plan(layout: CompositeLayout, num_layers: int, local: Sequence[int], missing: Sequence[int],
                num_slots: int, duplicate_shard: bool = False) -> MemoryPlan:
    pad = layout.padding_bytes_per_expert
    shard = num_layers * sum(p.nbytes for p in layout.pieces(local))
    slots = num_slots * sum(p.nbytes for p in layout.pieces(missing)) if missing else 0
    rep = num_layers * layout.num_experts * sum(s.nbytes for s in layout.specs.replicated)
    padding = pad * (num_layers * len(local) + (num_slots * len(missing) if missing else 0))
    return MemoryPlan(shard, slots, rep, padding, shard if duplicate_shard else 0)


def stacked_views(buf, layout: CompositeLayout) -> Dict[str, object]:
    """name -> [E, *shape] tensor over the uint8 region `buf` (experts `stride` bytes apart); no copy."""
    import torch
    out = {}
    for s, off, stride in zip(layout.specs.pooled, layout.offsets, layout.strides):
        dt = torch_dtype(s.dtype)
        item = dt.itemsize
        flat = buf[off: off + layout.num_experts * stride].view(dt)
        inner = [math.prod(s.shape[i + 1:]) for i in range(len(s.shape))]
        out[s.name] = flat.as_strided((layout.num_experts, *s.shape), (stride // item, *inner))
    return out
