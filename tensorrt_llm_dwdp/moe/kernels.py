"""Expert kernels on one layer's `[E, ...]` expert tensors (composite or ordinary): the same for every mode.

  * GROUPED_MM: BF16 through `torch._grouped_mm` (the library grouped GEMM), SwiGLU and the weighted
    combine as our fused kernels;
  * CUTLASS_BF16: the same steps with our CUTLASS grouped GEMM (the kernel the TensorRT plugin runs);
  * CUTLASS_FP8: DeepSeek-V3 block-scaled FP8 (1x128 activations, 128x128 weights) through our CUTLASS
    kernel, SwiGLU fused with the next quantization (torch has no block-scaled grouped GEMM on sm90);
  * DEEPGEMM_FP8 / DEEPGEMM_BF16: DeepGEMM's M-grouped contiguous GEMMs (the optional `deepgemm` extra) in
    our device-built layout, SwiGLU and combine ours (`moe.deepgemm`); FP8 needs dense expert stacks;
  * REFERENCE: plain torch, token by expert (CPU ranks, and the check for the others).

Every path: sort the T*k assignments by expert (an id equal to E, "no expert", sorts last and is never
computed), gather the token rows, grouped GEMM, SwiGLU, grouped GEMM, weighted sum over top-k in fp32. No
host synchronisation and no data-dependent shapes, so a layer can be captured in a CUDA graph.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Dict, Optional, Union

import torch

from . import deepgemm, ops
from .experts import SharedExpert, moe_experts, swiglu
from .rows import QuantizedRows
from .weights import ExpertWeights


class ExpertKernel(enum.Enum):
    GROUPED_MM = "grouped_mm"
    CUTLASS_BF16 = "cutlass_bf16"
    CUTLASS_FP8 = "cutlass_fp8"
    DEEPGEMM_FP8 = "deepgemm_fp8"
    DEEPGEMM_BF16 = "deepgemm_bf16"
    REFERENCE = "reference"


@dataclass(frozen=True)
class KernelChoice:
    kernel: ExpertKernel
    reason: str  # why this kernel (and not a faster one) runs these weights


def check(kernel: ExpertKernel, x: torch.Tensor, weights: ExpertWeights) -> Optional[str]:
    """None if `kernel` can run activations like x on these weights, else why not."""
    if kernel is ExpertKernel.REFERENCE:
        return None
    if kernel in _DEEPGEMM:
        return deepgemm.check(kernel is ExpertKernel.DEEPGEMM_FP8, x, weights)
    if kernel is ExpertKernel.CUTLASS_FP8 and (not weights.is_fp8 or weights.w13_scale is None
                                               or weights.w2_scale is None):
        return "weights are not FP8 e4m3 with w13_scale/w2_scale block scales"
    if not x.is_cuda or weights.device != x.device:
        return f"activations on {x.device}, weights on {weights.device}: the grouped kernels run on one GPU"
    if x.dtype != torch.bfloat16:
        return f"activations are {x.dtype}; the grouped kernels take bfloat16"
    if kernel is ExpertKernel.CUTLASS_FP8:
        if not ops.fp8_available(x):
            return "the CUTLASS FP8 kernel is not built (nvidia-cutlass headers) or this GPU is not Hopper (sm_90)"
        if any(d % ops.FP8_BLOCK for d in (*weights.w13.shape[1:], *weights.w2.shape[1:])):
            return "FP8 block scales need both GEMM dims of w13 and w2 to be multiples of 128"
        return None
    if weights.is_fp8 or weights.w13.dtype != torch.bfloat16:
        return f"weights are {weights.w13.dtype}; this kernel takes bfloat16"
    if any((d * 2) % 16 for d in (*weights.w13.shape[1:], *weights.w2.shape[1:])):
        return "both GEMM dims must be multiples of 8 bf16 (16 bytes) for TMA"
    if kernel is ExpertKernel.GROUPED_MM:
        if not hasattr(torch, "_grouped_mm"):
            return f"torch {torch.__version__} has no torch._grouped_mm"
        if torch.cuda.get_device_capability(x.device) < (9, 0):
            return "torch._grouped_mm's fast path needs Hopper or newer"
        padded = weights.padded("w13") or weights.padded("w2")
        if padded:
            return f"{padded}; torch._grouped_mm takes dense stacks"
        return None
    if not ops.cutlass_available(x):
        return "the CUTLASS BF16 kernel is not built (nvidia-cutlass headers) or this GPU is not Hopper (sm_90)"
    return None


_DEEPGEMM = (ExpertKernel.DEEPGEMM_FP8, ExpertKernel.DEEPGEMM_BF16)
# FP8: DeepGEMM before our CUTLASS kernel where it imports and the stacks are dense. BF16: torch._grouped_mm stays
# first; DEEPGEMM_BF16 is taken only when forced (expert_compute's kernel=, RoutedExperts(kernel=)) until a
# `bench kernels` measurement shows it faster.
_PREFERENCE = (ExpertKernel.DEEPGEMM_FP8, ExpertKernel.CUTLASS_FP8, ExpertKernel.GROUPED_MM,
               ExpertKernel.CUTLASS_BF16, ExpertKernel.REFERENCE)
# Steps with fewer (token, expert) assignments than this take our CUTLASS FP8 kernel first: at DeepSeek-V3 shapes
# its whole MLP measured faster at 8K tokens (65536 assignments; DeepGEMM's 0.94x on an H100 with exact rows,
# 0.935x on an H200 at the static bound) and slower at 16K (DeepGEMM's 1.09x). DeepGEMM's exact rows cost a host
# sync per layer, which small steps feel most. The crossover between the two was not measured.
DEEPGEMM_MIN_ASSIGNMENTS = 16384 * 8
_SMALL_STEP_PREFERENCE = (ExpertKernel.CUTLASS_FP8,) + tuple(k for k in _PREFERENCE
                                                              if k is not ExpertKernel.CUTLASS_FP8)

# Kernels that quantize their activations 1x128 with ops.quantize_fp8: they take QuantizedRows (DEP's FP8
# dispatch) as they are, so a DEP rank's experts see exactly what local's would have quantized.
QUANTIZED_INPUT = frozenset({ExpertKernel.CUTLASS_FP8, ExpertKernel.DEEPGEMM_FP8})


def select(x: torch.Tensor, weights: ExpertWeights, assignments: Optional[int] = None) -> KernelChoice:
    """The fastest kernel that runs here, chosen once per weights object, activation dtype/device and step size.
    assignments: the step's (token, expert) pairs where known; below DEEPGEMM_MIN_ASSIGNMENTS our CUTLASS FP8
    kernel comes before DeepGEMM's."""
    small = assignments is not None and assignments < DEEPGEMM_MIN_ASSIGNMENTS
    key = (x.dtype, x.device, small)
    choice = weights.kernels.get(key)
    if choice is None:
        why = []
        for kernel in _SMALL_STEP_PREFERENCE if small else _PREFERENCE:
            reason = check(kernel, x, weights)
            if reason is None:
                first = f"fastest available under {DEEPGEMM_MIN_ASSIGNMENTS} assignments" if small else \
                    "fastest available"
                choice = KernelChoice(kernel, "; ".join(why) or first)
                break
            why.append(f"{kernel.value}: {reason}")
        weights.kernels[key] = choice
    return choice


def expert_compute(x: Union[torch.Tensor, QuantizedRows], topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                   weights: ExpertWeights, shared: Optional[SharedExpert] = None, kernel: Optional[ExpertKernel] = None,
                   tile: int = 0, rows: Optional[torch.Tensor] = None,
                   assignments: Optional[int] = None, exact: Optional[bool] = None,
                   step: Optional[int] = None) -> torch.Tensor:
    """Routed (and shared) experts for x [T, H]: topk_ids [T, k] (E = no expert), topk_weights [T, k] -> [T, H].
    rows [M] int64: compute x[rows] only (topk_ids, topk_weights are then [M, k]; the result [M, H]); x is read
    in place, so a strided view (DEP's receive buffer) is never copied whole. assignments: how many ids are
    below E, when the caller knows it on the host (DEP's exact rows): the kernels' buffers are sized to it.
    exact: whether DeepGEMM may read its layout's padded row count on the host (`moe.deepgemm`); None: unless
    the stream is being captured; False keeps a caller's promise of no host sync. The other kernels read their
    row counts on the device and never need it. step: the (token, expert) pairs of the rank's own step, which
    `select` sizes the choice by (default: these rows' assignments); DEP passes its sender-side count, so that
    DWDP and DEP ranks with the same tokens pick the same kernel.
    kernel: force one (it must pass `check`); default `select`. tile: the CUTLASS tile (ops.grouped_gemm).
    x may be QuantizedRows (DEP's FP8 dispatch): the kernel is chosen for their activations' dtype; a kernel of
    QUANTIZED_INPUT takes them as they are, the reference and any other kernel dequantize the computed rows."""
    probe = x
    if isinstance(x, QuantizedRows):
        if shared is not None:
            raise ValueError("the shared expert runs on the token's own rows, not on rows quantized for dispatch")
        probe = torch.empty(0, x.shape[1], dtype=x.dtype, device=x.device)  # no memory: dtype and device only
    if kernel is None:
        if step is None:
            step = topk_ids.numel() if assignments is None else assignments
        kernel = select(probe, weights, step).kernel
    elif (reason := check(kernel, probe, weights)) is not None:
        raise ValueError(f"expert kernel {kernel.value} cannot run here: {reason}")
    if kernel is ExpertKernel.REFERENCE:
        return moe_experts(x, topk_ids, topk_weights, weights, shared, rows=rows)
    if isinstance(x, QuantizedRows) and kernel not in QUANTIZED_INPUT:
        x, rows = x.dequantize(rows), None
    m = x.shape[0] if rows is None else rows.numel()
    if not topk_ids.numel() or not weights.num_experts or assignments == 0:  # nothing to compute here
        out = torch.zeros(m, x.shape[1], dtype=x.dtype, device=x.device)
    elif kernel in _DEEPGEMM:
        out = deepgemm.moe_mlp(x, topk_ids, topk_weights, weights, kernel is ExpertKernel.DEEPGEMM_FP8, rows,
                               assignments=assignments, exact=exact)
    else:
        out = grouped(x, topk_ids, topk_weights, weights, kernel, tile, rows, assignments)
    if shared is None:
        return out
    return out + swiglu(x if rows is None else x.index_select(0, rows), shared.w13, shared.w2)


_ARANGE: Dict[torch.device, torch.Tensor] = {}


def _arange(n: int, device) -> torch.Tensor:
    """0..n-1 as a view of one per-device tensor grown to the largest n seen: token counts change every step,
    and one cached tensor per count would grow without bound."""
    device = torch.device(device)
    have = _ARANGE.get(device)
    if have is None or have.numel() < n:
        have = _ARANGE[device] = torch.arange(max(n, 2 * (0 if have is None else have.numel())), device=device)
    return have[:n]


@dataclass(frozen=True)
class Sorted:
    """Assignments sorted by expert: order[i] is the assignment in sorted row i; ends[e] the end of expert e's
    rows; row[a] the sorted row of assignment a (-1 for "no expert")."""

    order: torch.Tensor
    ends: torch.Tensor
    row: torch.Tensor


def sort_by_expert(topk_ids: torch.Tensor, num_experts: int) -> Sorted:
    flat = topk_ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    # searchsorted, unlike bincount, never syncs with the host
    ends = torch.searchsorted(flat[order], _arange(num_experts, flat.device), right=True)
    row = torch.empty_like(order)
    row[order] = _arange(order.numel(), flat.device)
    return Sorted(order, ends, torch.where(flat < num_experts, row, -1))


def grouped(x, topk_ids, topk_weights, weights: ExpertWeights, kernel: ExpertKernel, tile: int,
            rows: Optional[torch.Tensor] = None, assignments: Optional[int] = None) -> torch.Tensor:
    """The grouped path of `expert_compute` with `kernel`, without its check: tests drive it on CPU with the
    device ops replaced, where check would refuse."""
    k = topk_ids.shape[1]
    s = sort_by_expert(topk_ids, weights.num_experts)
    order = s.order
    if assignments is None and not x.is_cuda:  # reading a CPU tensor is no device sync
        assignments = int(s.ends[-1]) if s.ends.numel() else 0
    if assignments is not None:  # the real assignments only ("no expert" sorts last)
        order = order[:assignments]
    src, idx = order // k, _arange(order.numel(), x.device)
    # else GPUs keep the static shape (capturable): the real assignments' count stays on the device, permute and
    # SwiGLU stop there, the GEMMs at the ends
    limit = s.ends[-1:] if assignments is None and s.ends.numel() else None
    up_first = weights.up_first
    if kernel is ExpertKernel.CUTLASS_FP8:
        if isinstance(x, QuantizedRows):  # quantized once by their sender: gathered from the receive view in place
            xq, xs = x.q, x.scales
            src = src if rows is None else rows.index_select(0, src)
        else:
            if rows is not None:
                x = x.index_select(0, rows)  # the M computed rows, once, before quantizing
            xq, xs = ops.quantize_fp8(x)  # the token rows once, then gathered with their scales
        xq, xs = _gather_rows(xq, src, idx, limit), _gather_rows(xs, src, idx, limit)
        h = ops.grouped_gemm_fp8(xq, xs, s.ends, weights.w13, weights.w13_scale, tile)
        aq, as_ = ops.swiglu_quantize_fp8(h, up_first, limit)
        y = ops.grouped_gemm_fp8(aq, as_, s.ends, weights.w2, weights.w2_scale, tile)
    else:
        # NOTE: straight from the (possibly strided) receive view into expert order, the computed rows only
        xp = ops.permute_rows(x, src if rows is None else rows.index_select(0, src), idx, idx.numel(), limit)
        if kernel is ExpertKernel.GROUPED_MM:
            offs = s.ends.to(torch.int32)
            h = torch._grouped_mm(xp, weights.w13.transpose(-2, -1), offs=offs)
            y = torch._grouped_mm(ops.swiglu(h, up_first, limit), weights.w2.transpose(-2, -1), offs=offs)
        else:
            h = ops.grouped_gemm(xp, s.ends, weights.w13, tile)
            y = ops.grouped_gemm(ops.swiglu(h, up_first, limit), s.ends, weights.w2, tile)
    return ops.combine(y, s.row, topk_weights.reshape(-1), k).to(x.dtype)


def _gather_rows(t: torch.Tensor, src: torch.Tensor, idx: torch.Tensor, limit=None) -> torch.Tensor:
    """t[src] for rows of any dtype; the bf16 permute kernel moves them (up to `limit`) when a row is 16-byte
    aligned."""
    if (t.shape[1] * t.element_size()) % 16 == 0:
        return ops.permute_rows(t.view(torch.bfloat16), src, idx, src.numel(), limit).view(t.dtype)
    return t.view(torch.uint8).index_select(0, src).view(t.dtype)
