"""SwiGLU experts in plain torch: the reference every faster kernel is checked against, and the path on CPU.

Reads one `ExpertWeights` (plain [E, ...] tensors, composite or ordinary); an expert id equal to
num_experts means "no expert" and contributes nothing (DEP's receivers pass rows with fewer than k of
their own experts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F

from .rows import QuantizedRows
from .weights import ExpertWeights


@dataclass(frozen=True)
class SharedExpert:
    """Always-on expert: w13 [2 * Is, H] (gate rows first), w2 [H, Is]."""

    w13: torch.Tensor
    w2: torch.Tensor


def swiglu(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, up_first: bool = False) -> torch.Tensor:
    """x [n, H] -> [n, H] with w13 [2I, H] (gate rows first, or up rows first), w2 [H, I]; math in x.dtype."""
    a, b = (x @ w13.to(x.dtype).t()).chunk(2, dim=-1)
    gate, up = (b, a) if up_first else (a, b)
    return (F.silu(gate) * up) @ w2.to(x.dtype).t()


def moe_experts(x: Union[torch.Tensor, QuantizedRows], topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                weights: ExpertWeights, shared: Optional[SharedExpert] = None,
                rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Routed (and shared) expert output for x [T, H]; returns [T, H] in x.dtype.

    Tokens are sorted by expert; each expert with tokens runs once on its rows (FP8 weights dequantized,
    activations not quantized here). T may be 0; an id >= num_experts is "no expert" (a DEP receiver's rows carry
    fewer than k of its experts) and contributes nothing. rows [M]: compute x[rows] only (topk_* are [M, k],
    the result [M, H]); each expert gathers its rows from x in place. x may be QuantizedRows (DEP's FP8
    dispatch): each expert dequantizes the rows it gathers (q * its 1x128 block's scale), math in x.dtype."""
    quantized = isinstance(x, QuantizedRows)
    if quantized and shared is not None:
        raise ValueError("the shared expert runs on the token's own rows, not on rows quantized for dispatch")
    m = x.shape[0] if rows is None else rows.numel()
    out = torch.zeros(m, x.shape[1], dtype=x.dtype, device=x.device)
    e_count = weights.num_experts
    if m:
        flat_ids = topk_ids.reshape(-1)
        order = torch.argsort(flat_ids, stable=True)
        counts = torch.bincount(flat_ids, minlength=e_count + 1).tolist()
        token_of = order // topk_ids.shape[1]
        scale = topk_weights.reshape(-1)[order].to(x.dtype)
        up_first = weights.up_first
        start = 0
        for e, n in enumerate(counts[:e_count]):
            if n:
                mine = token_of[start:start + n]
                at = mine if rows is None else rows.index_select(0, mine)
                xe = x.dequantize(at) if quantized else x.index_select(0, at)
                y = swiglu(xe, weights.dense(e, "w13"), weights.dense(e, "w2"), up_first)
                out.index_add_(0, mine, y * scale[start:start + n, None])
            start += n
    if shared is not None:
        out = out + swiglu(x if rows is None else x.index_select(0, rows), shared.w13, shared.w2)
    return out
