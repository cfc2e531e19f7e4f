"""Byte layout of expert weights inside a shard or a prefetch slot. Pure arithmetic.

A block holds n experts of one MoE layer: for each weight tensor (w13, w2, and later
scales) a contiguous [n, *shape] array, each array aligned to ALIGN bytes. A rank's
shard is one block per MoE layer, back to back; a prefetch slot is one block sized for
the largest set of missing experts. Stacked arrays are what grouped GEMMs read in place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import torch

ALIGN = 256

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32,
           "float64": torch.float64, "float8_e4m3fn": torch.float8_e4m3fn}


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class ExpertTensorSpec:
    """One weight tensor of one expert: name, per-expert shape and dtype name."""

    name: str
    shape: Tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch_dtype(self.dtype).itemsize


FP8_BLOCK = 128  # DeepSeek-V3 weight scale block: 128 x 128


def swiglu_expert_specs(hidden_size: int, intermediate_size: int, dtype: str) -> Tuple[ExpertTensorSpec, ...]:
    """w13: [2 * I, H] (gate rows then up rows); w2: [H, I]. y = w2 @ (silu(gate x) * up x).

    float8_e4m3fn adds DeepSeek-V3 block scales, one fp32 per 128x128 block, in the layout of the
    checkpoints' weight_scale_inv: w13_scale [2I/128, H/128], w2_scale [H/128, I/128]. They travel
    with their expert, so a pull brings both."""
    specs = (ExpertTensorSpec("w13", (2 * intermediate_size, hidden_size), dtype),
             ExpertTensorSpec("w2", (hidden_size, intermediate_size), dtype))
    if dtype != "float8_e4m3fn":
        return specs
    if hidden_size % FP8_BLOCK or intermediate_size % FP8_BLOCK:
        raise ValueError(f"FP8 block-scaled experts need hidden ({hidden_size}) and intermediate "
                         f"({intermediate_size}) sizes that are multiples of {FP8_BLOCK}")
    h, i = hidden_size // FP8_BLOCK, intermediate_size // FP8_BLOCK
    return specs + (ExpertTensorSpec("w13_scale", (2 * i, h), "float32"),
                    ExpertTensorSpec("w2_scale", (h, i), "float32"))


@dataclass(frozen=True)
class BlockLayout:
    """n experts of one layer: offsets (bytes from the block start) of each tensor array."""

    specs: Tuple[ExpertTensorSpec, ...]
    num_experts: int

    @property
    def offsets(self) -> Tuple[int, ...]:
        out, off = [], 0
        for s in self.specs:
            out.append(off)
            off = _align(off + self.num_experts * s.nbytes)
        return tuple(out)

    @property
    def nbytes(self) -> int:
        return _align(sum(_align(self.num_experts * s.nbytes) for s in self.specs)) or ALIGN

    @property
    def expert_nbytes(self) -> int:
        return sum(s.nbytes for s in self.specs)

    def expert_ranges(self, row: int) -> Tuple[Tuple[int, int], ...]:
        """(offset, nbytes) of expert `row` in each tensor array, in spec order."""
        if not 0 <= row < self.num_experts:
            raise IndexError(f"row {row} outside block of {self.num_experts} experts")
        return tuple((off + row * s.nbytes, s.nbytes) for off, s in zip(self.offsets, self.specs))

    def views(self, buf: torch.Tensor, base: int = 0) -> dict:
        """name -> [n, *shape] tensor viewing the uint8 buffer `buf` at byte `base`; no copy."""
        out = {}
        for off, s in zip(self.offsets, self.specs):
            n = self.num_experts * s.nbytes
            raw = buf[base + off: base + off + n]
            out[s.name] = raw.view(torch_dtype(s.dtype)).view(self.num_experts, *s.shape)
        return out


@dataclass(frozen=True)
class ShardLayout:
    """One block per MoE layer, back to back."""

    block: BlockLayout
    num_layers: int

    def layer_offset(self, layer: int) -> int:
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"MoE layer {layer} outside [0, {self.num_layers})")
        return layer * self.block.nbytes

    @property
    def nbytes(self) -> int:
        return self.num_layers * self.block.nbytes
