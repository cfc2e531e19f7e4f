"""Split-weight experts on grouped GEMMs: BF16 through `torch._grouped_mm` (one call per segment)
or one CUTLASS launch over all segments; FP8 with DeepSeek-V3 block scales through the CUTLASS
block-scaled kernel (`_fp8`).

Same contract as `experts.moe_experts`. No host synchronisation and no data-dependent
shapes, so it can be captured in a CUDA graph:

  * permute: assignments are sorted by storage position (segment, row); segment s's rows
    land in its own fixed window [s*A, (s+1)*A) of the permuted buffer (A = T*K), so each
    segment's GEMM gets a static slice and device-side group offsets;
  * per segment: h = grouped_mm(x_s, w13_s^T), SwiGLU, y_s = grouped_mm(act, w2_s^T),
    reading the segment's stacked weights in place (shard or prefetch slot);
  * combine: each assignment reads its row from its segment's output (rows past a
    segment's last offset are never read), weighted, summed over top-k in fp32.
Permute and combine are `ops` custom ops: CUDA kernels from `cpp/` on GPUs. The one-launch
paths skip the windows: one sorted buffer, groups in storage order across segments.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from . import ops
from .experts import SharedExpert, SplitExpertWeights, swiglu

_DTYPES = (torch.bfloat16,)


FP8 = torch.float8_e4m3fn
SCALES = {"w13": "w13_scale", "w2": "w2_scale"}


def is_fp8(weights: SplitExpertWeights) -> bool:
    return weights.segments[0].tensors["w13"].dtype == FP8


def can_run(x: torch.Tensor, weights: SplitExpertWeights) -> Tuple[bool, str]:
    """Whether this backend can run these inputs, and if not, why."""
    if x.dtype not in _DTYPES:
        return False, f"activations are {x.dtype}; the grouped path takes bfloat16"
    fp8 = is_fp8(weights)
    if not fp8 and not hasattr(torch, "_grouped_mm"):
        return False, f"torch {torch.__version__} has no torch._grouped_mm"
    for seg in weights.segments:
        for name in ("w13", "w2"):
            w = seg.tensors[name]
            if w.device != x.device or w.dtype != (FP8 if fp8 else x.dtype):
                return False, f"segment weight {name} is {w.dtype} on {w.device}, activations {x.dtype} on {x.device}"
            if fp8:
                if SCALES[name] not in seg.tensors:
                    return False, f"FP8 weight {name} has no {SCALES[name]} block scales"
                if w.shape[-1] % ops.FP8_BLOCK or w.shape[-2] % ops.FP8_BLOCK:
                    return False, f"FP8 weight {name} {tuple(w.shape)}: both GEMM dims must be multiples of 128"
            elif (w.shape[-1] * w.element_size()) % 16 or (w.shape[-2] * w.element_size()) % 16:
                return False, f"weight {name} {tuple(w.shape)}: both GEMM dims must be 16-byte multiples"
    return True, ""


def grouped_moe_experts(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                        weights: SplitExpertWeights, shared: Optional[SharedExpert] = None,
                        single_launch: Optional[bool] = None, tile: int = 0) -> torch.Tensor:
    """x [T, H] bf16; topk_ids [T, K]; topk_weights [T, K]; returns [T, H] in x.dtype.

    BF16 weights: single_launch True = the CUTLASS kernel (one launch over all segments, Hopper);
    False = one `torch._grouped_mm` call per segment; None = the CUTLASS kernel where it can run
    (0.99-1.43x the per-segment path's speed on the H100, faster in all but one cell; BENCHMARKS.md).
    FP8 weights (e4m3 with `w13_scale`/`w2_scale` block scales): always the one-launch path, with
    activations quantized in 1x128 groups (plain torch off Hopper).
    tile: the CUTLASS kernel shape (`ops.split_grouped_gemm`); 0 picks by rows per expert."""
    num_tokens, hidden = x.shape
    k = topk_ids.shape[1]
    a = num_tokens * k
    if a == 0:
        out = torch.zeros_like(x)
        return out if shared is None else out + swiglu(x, shared.w13, shared.w2)
    if is_fp8(weights):
        return _fp8(x, topk_ids, topk_weights, weights, shared, tile)
    if single_launch is None:
        single_launch = ops.single_launch_available(x)
    if single_launch:
        if not ops.single_launch_available(x):
            raise RuntimeError("single_launch=True needs the CUTLASS kernel (built with nvidia-cutlass), "
                               "a Hopper GPU and bf16 activations")
        return _single_launch(x, topk_ids, topk_weights, weights, shared, tile)
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


def _sorted_by_storage(x, topk_ids, weights: SplitExpertWeights):
    """(order, ends, idx): assignments sorted by storage position, each expert's cumulative row end,
    and 0..A-1 (the sorted rows, shared by the gather and the combine)."""
    tables = weights.storage_tables(x.device)
    pos = tables.position[topk_ids.reshape(-1)]
    order = torch.argsort(pos, stable=True)
    rows = torch.arange(tables.segment_of_position.numel(), device=x.device)
    return order, torch.searchsorted(pos[order], rows, right=True), torch.arange(order.numel(), device=x.device)


def _combine_sorted(y, order, idx, topk_weights, k):
    """Weighted sum over top-k of y's rows, which are in sorted-assignment order."""
    slot_of = torch.empty_like(idx)
    slot_of[order] = idx
    return ops.combine([y], torch.zeros_like(slot_of), slot_of, topk_weights.reshape(-1), k)


def _single_launch(x, topk_ids, topk_weights, weights: SplitExpertWeights, shared, tile):
    """Hopper path: one CUTLASS launch per GEMM over all segments, weights read in place."""
    hidden, k = x.shape[1], topk_ids.shape[1]
    order, ends, idx = _sorted_by_storage(x, topk_ids, weights)
    x_perm = ops.permute_rows(x, order // k, idx, order.numel())
    w13 = [seg.tensors["w13"] for seg in weights.segments]
    h = ops.split_grouped_gemm(x_perm, ends, w13, w13[0].shape[1], tile)
    gate, up = h.chunk(2, dim=-1)
    act = (F.silu(gate) * up).contiguous()
    y = ops.split_grouped_gemm(act, ends, [seg.tensors["w2"] for seg in weights.segments], hidden, tile)
    out = _combine_sorted(y, order, idx, topk_weights, k)
    return out if shared is None else out + swiglu(x, shared.w13, shared.w2)


def _gather_rows(t: torch.Tensor, src: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t[src] for rows of any dtype (idx = 0..len(src)-1); the bf16 permute kernel moves them when a row
    is 16-byte aligned."""
    row_bytes = t.shape[1] * t.element_size()
    if row_bytes % 16 == 0:
        moved = ops.permute_rows(t.view(torch.bfloat16), src, idx, src.numel())
        return moved.view(t.dtype)
    return t.view(torch.uint8).index_select(0, src).view(t.dtype)


def _fp8(x, topk_ids, topk_weights, weights: SplitExpertWeights, shared, tile):
    """Block-scaled FP8: quantize the T token rows once, gather them (and their scales) in expert order,
    GEMM, SwiGLU fused with the next quantization, GEMM, combine. Weights and scales read in place."""
    hidden, k = x.shape[1], topk_ids.shape[1]
    order, ends, idx = _sorted_by_storage(x, topk_ids, weights)
    xq, xs = ops.quantize_fp8(x)
    src = order // k
    xq, xs = _gather_rows(xq, src, idx), _gather_rows(xs, src, idx)
    segs = weights.segments
    w13, w13s = [s.tensors["w13"] for s in segs], [s.tensors["w13_scale"] for s in segs]
    h = ops.split_grouped_gemm_fp8(xq, xs, ends, w13, w13s, w13[0].shape[1], tile)
    aq, as_ = ops.swiglu_quantize_fp8(h)
    y = ops.split_grouped_gemm_fp8(aq, as_, ends, [s.tensors["w2"] for s in segs],
                                   [s.tensors["w2_scale"] for s in segs], hidden, tile)
    out = _combine_sorted(y, order, idx, topk_weights, k).to(x.dtype)
    return out if shared is None else out + swiglu(x, shared.w13, shared.w2)
