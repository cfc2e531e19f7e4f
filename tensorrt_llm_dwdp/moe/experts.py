"""SwiGLU experts over split weights: each expert is read in place from the segment that
holds it (the local shard or a prefetch slot), never merged into one buffer.

This is the plain-torch path; faster backends fill the same slot (same inputs and outputs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F

from .ops import dequantize_blocks


@dataclass(frozen=True)
class WeightSegment:
    """Experts stored together: tensors[name] is [len(expert_ids), *shape], row i = expert_ids[i]."""

    expert_ids: Tuple[int, ...]
    tensors: Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class SplitExpertWeights:
    """All experts of one MoE layer, spread over segments. Invariant: each expert id in
    [0, num_experts) is in exactly one segment (the hooks pick one for redundant copies)."""

    num_experts: int
    segments: Tuple[WeightSegment, ...]
    _where: Dict[int, Tuple[int, int]] = field(default_factory=dict, repr=False, compare=False)
    _device_tables: Dict[torch.device, "StorageTables"] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        where = {}
        for si, seg in enumerate(self.segments):
            for row, e in enumerate(seg.expert_ids):
                if e in where:
                    raise ValueError(f"expert {e} appears in two segments")
                where[e] = (si, row)
        if len(where) != self.num_experts:
            raise ValueError(f"segments hold {len(where)} of {self.num_experts} experts")
        self._where.update(where)

    def locate(self, expert: int) -> Tuple[int, int]:
        """(segment index, row) of an expert."""
        return self._where[expert]

    def storage_tables(self, device: torch.device) -> "StorageTables":
        """Index tables for kernels that walk experts in storage order; built once per device."""
        device = torch.device(device)
        if device not in self._device_tables:
            sizes = [len(s.expert_ids) for s in self.segments]
            bases = [sum(sizes[:i]) for i in range(len(sizes))]
            pos = [0] * self.num_experts
            for e, (si, row) in self._where.items():
                pos[e] = bases[si] + row
            self._device_tables[device] = StorageTables(
                position=torch.tensor(pos, dtype=torch.long, device=device),
                segment_of_position=torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)).to(device),
                bases=tuple(bases), bases_t=torch.tensor(bases, dtype=torch.long, device=device))
        return self._device_tables[device]

    def expert(self, expert: int, name: str) -> torch.Tensor:
        si, row = self._where[expert]
        return self.segments[si].tensors[name][row]

    def dense(self, expert: int, name: str) -> torch.Tensor:
        """An expert's weight as stored, or dequantized to fp32 where block scales (`<name>_scale`) exist."""
        si, row = self._where[expert]
        tensors = self.segments[si].tensors
        if name + "_scale" not in tensors:
            return tensors[name][row]
        return dequantize_blocks(tensors[name][row], tensors[name + "_scale"][row])


@dataclass(frozen=True)
class StorageTables:
    """Experts in storage order: segment 0's rows, then segment 1's, ..."""

    position: torch.Tensor  # [E] int64: expert id -> storage position
    segment_of_position: torch.Tensor  # [sum of segment sizes] int64
    bases: Tuple[int, ...]  # first storage position of each segment
    bases_t: torch.Tensor  # the same on the device


@dataclass(frozen=True)
class SharedExpert:
    """Always-on expert: w13 [2 * Is, H], w2 [H, Is]."""

    w13: torch.Tensor
    w2: torch.Tensor


def swiglu(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """x [n, H] -> [n, H] with w13 [2I, H] (gate rows first), w2 [H, I]; math in x.dtype."""
    gate_up = x @ w13.to(x.dtype).t()
    gate, up = gate_up.chunk(2, dim=-1)
    return (F.silu(gate) * up) @ w2.to(x.dtype).t()


def moe_experts(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                weights: SplitExpertWeights, shared: Optional[SharedExpert] = None) -> torch.Tensor:
    """Routed (and shared) expert output for x [T, H]; returns [T, H] in x.dtype.

    Tokens are sorted by expert; each expert with tokens runs once on its rows, reading
    its weights where they lie. T may be 0. An id >= weights.num_experts is "no expert" and
    contributes nothing (a DEP receiver's rows carry fewer than K local experts).
    """
    num_tokens, _ = x.shape
    out = torch.zeros_like(x)
    if num_tokens:
        flat_ids = topk_ids.reshape(-1)
        order = torch.argsort(flat_ids, stable=True)
        counts = torch.bincount(flat_ids, minlength=weights.num_experts).tolist()
        token_of = order // topk_ids.shape[1]
        scale = topk_weights.reshape(-1)[order].to(x.dtype)
        start = 0
        for e, n in enumerate(counts[:weights.num_experts]):  # "no expert" ids sort last
            if n == 0:
                continue
            rows = token_of[start:start + n]
            y = swiglu(x[rows], weights.dense(e, "w13"), weights.dense(e, "w2"))
            out.index_add_(0, rows, y * scale[start:start + n, None])
            start += n
    if shared is not None:
        out = out + swiglu(x, shared.w13, shared.w2)
    return out
