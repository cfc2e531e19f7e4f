"""Permute and combine as torch custom ops: the C++/CUDA kernels on GPUs (bf16, hidden % 8 == 0),
plain torch elsewhere. Fake implementations make them traceable by torch.compile and
capturable in CUDA graphs (no host synchronisation, shapes known from the arguments)."""

from __future__ import annotations

from typing import List

import torch


def _native():
    try:
        from .. import _C
    except ImportError:
        return None
    return _C


def _fast(x: torch.Tensor) -> bool:
    return x.is_cuda and x.dtype == torch.bfloat16 and x.shape[-1] % 8 == 0 and _native() is not None


@torch.library.custom_op("dwdp::permute_rows", mutates_args=())
def permute_rows(x: torch.Tensor, src: torch.Tensor, dest: torch.Tensor, out_rows: int) -> torch.Tensor:
    """out[dest[i]] = x[src[i]]; out is [out_rows, H]; rows no dest names are left unwritten."""
    out = x.new_empty(out_rows, x.shape[1])
    if _fast(x):
        x, src, dest = x.contiguous(), src.contiguous(), dest.contiguous()
        _native().permute_rows_bf16(x.data_ptr(), src.data_ptr(), dest.data_ptr(), src.numel(), x.shape[1],
                                    out.data_ptr(), torch.cuda.current_stream(x.device).cuda_stream)
    else:
        out.index_copy_(0, dest, x.index_select(0, src))
    return out


@permute_rows.register_fake
def _(x, src, dest, out_rows):
    return x.new_empty(out_rows, x.shape[1])


@torch.library.custom_op("dwdp::combine", mutates_args=())
def combine(ys: List[torch.Tensor], segment: torch.Tensor, row: torch.Tensor, weight: torch.Tensor,
            k: int) -> torch.Tensor:
    """out[t] = sum_j weight[a] * ys[segment[a]][row[a]], a = t*k + j; fp32 accumulation; [T, H]."""
    tokens = segment.numel() // k
    hidden = next(y.shape[1] for y in ys)
    ref = ys[0]
    out = ref.new_empty(tokens, hidden)
    if _fast(ref) and all(y.is_contiguous() for y in ys) and len(ys) <= 8:
        segment, row, weight = segment.contiguous(), row.contiguous(), weight.float().contiguous()
        _native().combine_bf16([y.data_ptr() for y in ys], segment.data_ptr(), row.data_ptr(), weight.data_ptr(),
                               tokens, k, hidden, out.data_ptr(), torch.cuda.current_stream(ref.device).cuda_stream)
        return out
    acc = torch.zeros(tokens * k, hidden, dtype=torch.float32, device=ref.device)
    for s, y in enumerate(ys):
        if y.shape[0] == 0:
            continue
        mine = segment == s
        rows = y.index_select(0, torch.where(mine, row, 0)).float()  # other segments' rows masked below
        acc = torch.where(mine[:, None], rows, acc)
    out.copy_((acc * weight.float().reshape(-1, 1)).view(tokens, k, hidden).sum(1))
    return out


@combine.register_fake
def _(ys, segment, row, weight, k):
    return ys[0].new_empty(segment.shape[0] // k, ys[0].shape[1])


def single_launch_available(x: torch.Tensor) -> bool:
    """The CUTLASS split-weight grouped GEMM is built and can run on x's device (Hopper, bf16)."""
    native = _native()
    return (_fast(x) and native is not None and hasattr(native, "grouped_gemm_bf16")
            and torch.cuda.get_device_capability(x.device) == (9, 0))


@torch.library.custom_op("dwdp::split_grouped_gemm", mutates_args=())
def split_grouped_gemm(a: torch.Tensor, row_ends: torch.Tensor, weights: List[torch.Tensor], n: int) -> torch.Tensor:
    """out[r0:r1] = a[r0:r1] @ W_g^T for each group g in storage order (segment 0's experts, then
    segment 1's, ...), W_g read in place from `weights` (each [E_s, N, K]); row_ends: int64 [G]
    cumulative. One kernel launch on Hopper; plain torch elsewhere. Rows past the end: zeros."""
    out = a.new_zeros(a.shape[0], n)
    used = [w for w in weights if w.shape[0] > 0]
    if single_launch_available(a):
        native = _native()
        ws_bytes = native.grouped_gemm_bf16_workspace_size(int(row_ends.numel()))
        ws = torch.empty(ws_bytes, dtype=torch.uint8, device=a.device)
        native.grouped_gemm_bf16(a.contiguous().data_ptr(), row_ends.contiguous().data_ptr(),
                                 [w.data_ptr() for w in used], [w.shape[0] for w in used], out.data_ptr(), n,
                                 a.shape[1], ws.data_ptr(), ws_bytes, torch.cuda.current_stream(a.device).cuda_stream)
        return out
    stacked = [w[i] for w in used for i in range(w.shape[0])]
    ends = row_ends.tolist()
    start = 0
    for g, end in enumerate(ends):
        if end > start:
            out[start:end] = a[start:end] @ stacked[g].to(a.dtype).t()
        start = end
    return out


@split_grouped_gemm.register_fake
def _(a, row_ends, weights, n):
    return a.new_empty(a.shape[0], n)
