"""One MoE layer's routed experts as plain `[E, ...]` tensors: what every expert kernel reads.

On a DWDP rank the tensors are composite views (local shard and prefetch slot joined in virtual memory),
on a local or DEP rank ordinary tensors; kernels cannot tell them apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import torch

from ..layout import W13Order
from .ops import dequantize_blocks

FP8 = torch.float8_e4m3fn


@dataclass(frozen=True)
class ExpertWeights:
    """w13 [E, 2I, H] (gate and up rows in `w13_order`), w2 [E, H, I]; for FP8 e4m3 weights, DeepSeek-V3 block
    scales w13_scale [E, 2I/128, H/128] and w2_scale [E, H/128, I/128] fp32. Dim 0 may be padded (stride >= the
    expert's size). Invariant: all on one device."""

    w13: torch.Tensor
    w2: torch.Tensor
    w13_scale: Optional[torch.Tensor] = None
    w2_scale: Optional[torch.Tensor] = None
    w13_order: W13Order = W13Order.GATE_UP
    # kernel choice per activation (dtype, device) and step size, made once per weights object (moe.kernels.select)
    kernels: Dict[tuple, object] = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_experts(self) -> int:
        return self.w13.shape[0]

    @property
    def up_first(self) -> bool:
        """w13 holds the up projection's rows first (TensorRT-LLM's w3_w1 order); SwiGLU reads its halves so."""
        return self.w13_order is W13Order.UP_GATE

    @property
    def is_fp8(self) -> bool:
        return self.w13.dtype == FP8

    @property
    def device(self) -> torch.device:
        return self.w13.device

    def padded(self, name: str) -> Optional[str]:
        """Why the experts of `name` (w13, w2) are not one dense [E, N, K] stack (composite padding, or a strided
        expert), else None: what library grouped GEMMs that read [E*N, K] need. No experts: dense."""
        w = getattr(self, name)
        size = w.shape[1:].numel()
        if w.shape[0] and w.stride(0) != size:
            return f"{name} experts are padded (composite stride {w.stride(0)} > expert size {size})"
        if w.shape[0] and not w[0].is_contiguous():
            return f"{name} experts are strided within (strides {tuple(w.stride())}), not row-major [N, K] each"
        return None

    def dense(self, expert: int, name: str) -> torch.Tensor:
        """An expert's weight as stored, or dequantized to fp32 where block scales exist."""
        w = getattr(self, name)[expert]
        scale = getattr(self, name + "_scale")
        return w if scale is None else dequantize_blocks(w, scale[expert])

    @classmethod
    def from_tensors(cls, tensors, w13_order: W13Order = W13Order.GATE_UP) -> "ExpertWeights":
        """From a mapping with w13, w2 (and w13_scale, w2_scale for FP8)."""
        return cls(tensors["w13"], tensors["w2"], tensors.get("w13_scale"), tensors.get("w2_scale"), w13_order)
