"""Split-weight experts on library grouped GEMMs (`torch._grouped_mm`), one call per segment.

Same contract as `experts.moe_experts`. No host synchronisation and no data-dependent
shapes, so it can be captured in a CUDA graph:

  * permute: assignments are sorted by storage position (segment, row); segment s's rows
    land in its own fixed window [s*A, (s+1)*A) of the permuted buffer (A = T*K), so each
    segment's GEMM gets a static slice and device-side group offsets;
  * per segment: h = grouped_mm(x_s, w13_s^T), SwiGLU, y_s = grouped_mm(act, w2_s^T),
    reading the segment's stacked weights in place (shard or prefetch slot);
  * combine: each assignment reads its row from its segment's output (rows past a
    segment's last offset are never read), weighted, summed over top-k in fp32.
Permute and combine are `ops` custom ops: CUDA kernels from `cpp/` on GPUs.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from . import ops
from .experts import SharedExpert, SplitExpertWeights, swiglu

_DTYPES = (torch.bfloat16,)


def can_run(x: torch.Tensor, weights: SplitExpertWeights) -> Tuple[bool, str]:
    """Whether this backend can run these inputs, and if not, why."""
    if not hasattr(torch, "_grouped_mm"):
        return False, f"torch {torch.__version__} has no torch._grouped_mm"
    if x.dtype not in _DTYPES:
        return False, f"activations are {x.dtype}; torch._grouped_mm here takes bfloat16"
    for seg in weights.segments:
        for name in ("w13", "w2"):
            w = seg.tensors[name]
            if w.dtype != x.dtype or w.device != x.device:
                return False, f"segment weight {name} is {w.dtype} on {w.device}, activations {x.dtype} on {x.device}"
            if (w.shape[-1] * w.element_size()) % 16 or (w.shape[-2] * w.element_size()) % 16:
                return False, f"weight {name} {tuple(w.shape)}: both GEMM dims must be 16-byte multiples"
    return True, ""


def grouped_moe_experts(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                        weights: SplitExpertWeights, shared: Optional[SharedExpert] = None,
                        single_launch: Optional[bool] = None) -> torch.Tensor:
    """x [T, H] bf16; topk_ids [T, K]; topk_weights [T, K]; returns [T, H] in x.dtype.

    single_launch: True = the CUTLASS kernel (one launch over all segments, Hopper); False or None =
    one `torch._grouped_mm` call per segment.
    NOTE: None picks the per-segment path because it measured faster on the H100 at most sizes
    (the CUTLASS tile is untuned: 0.59x at DeepSeek-V3 shapes, 16K tokens; BENCHMARKS.md)."""
    num_tokens, hidden = x.shape
    k = topk_ids.shape[1]
    a = num_tokens * k
    if a == 0:
        out = torch.zeros_like(x)
        return out if shared is None else out + swiglu(x, shared.w13, shared.w2)
    if single_launch:
        if not ops.single_launch_available(x):
            raise RuntimeError("single_launch=True needs the CUTLASS kernel (built with nvidia-cutlass), "
                               "a Hopper GPU and bf16 activations")
        return _single_launch(x, topk_ids, topk_weights, weights, shared)
    nseg = len(weights.segments)
    tables = weights.storage_tables(x.device)
    bases = tables.bases

    pos = tables.position[topk_ids.reshape(-1)]  # [A] storage position of each assignment
    order = torch.argsort(pos, stable=True)  # sorted index -> assignment
    sorted_pos = pos[order]
    # End (exclusive) of each storage row in sorted order; searchsorted, unlike bincount, never syncs.
    rows = torch.arange(tables.segment_of_position.numel(), device=x.device)
    ends = torch.searchsorted(sorted_pos, rows, right=True)
    seg_start = F.pad(ends, (1, 0)).index_select(0, tables.bases_t)  # first sorted index of each segment
    sorted_seg = tables.segment_of_position[sorted_pos]
    dest = torch.arange(a, device=x.device) - seg_start[sorted_seg] + sorted_seg * a  # windowed slot
    x_perm = ops.permute_rows(x, order // k, dest, nseg * a)

    outs = []
    for s, seg in enumerate(weights.segments):
        n = len(seg.expert_ids)
        if n == 0:
            outs.append(x.new_empty(0, hidden))  # no assignment names an empty segment
            continue
        offs = (ends[bases[s]:bases[s] + n] - seg_start[s]).to(torch.int32)
        xs = x_perm[s * a:(s + 1) * a]
        h = torch._grouped_mm(xs, seg.tensors["w13"].transpose(-2, -1), offs=offs)
        gate, up = h.chunk(2, dim=-1)
        outs.append(torch._grouped_mm(F.silu(gate) * up, seg.tensors["w2"].transpose(-2, -1), offs=offs))

    slot_of = torch.empty_like(dest)  # windowed slot of each assignment, in assignment order
    slot_of[order] = dest
    out = ops.combine(outs, slot_of // a, slot_of % a, topk_weights.reshape(-1), k)
    if shared is not None:
        out = out + swiglu(x, shared.w13, shared.w2)
    return out


def _single_launch(x, topk_ids, topk_weights, weights: SplitExpertWeights, shared):
    """Hopper path: one CUTLASS launch per GEMM over all segments, weights read in place."""
    num_tokens, hidden = x.shape
    k = topk_ids.shape[1]
    a = num_tokens * k
    tables = weights.storage_tables(x.device)
    pos = tables.position[topk_ids.reshape(-1)]
    order = torch.argsort(pos, stable=True)
    rows = torch.arange(tables.segment_of_position.numel(), device=x.device)
    ends = torch.searchsorted(pos[order], rows, right=True)
    sorted_idx = torch.arange(a, device=x.device)
    x_perm = ops.permute_rows(x, order // k, sorted_idx, a)
    w13 = [seg.tensors["w13"] for seg in weights.segments]
    h = ops.split_grouped_gemm(x_perm, ends, w13, w13[0].shape[1])
    gate, up = h.chunk(2, dim=-1)
    act = (F.silu(gate) * up).contiguous()
    y = ops.split_grouped_gemm(act, ends, [seg.tensors["w2"] for seg in weights.segments], hidden)
    slot_of = torch.empty_like(sorted_idx)
    slot_of[order] = sorted_idx
    out = ops.combine([y], torch.zeros_like(slot_of), slot_of, topk_weights.reshape(-1), k)
    if shared is not None:
        out = out + swiglu(x, shared.w13, shared.w2)
    return out
