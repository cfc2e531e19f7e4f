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
