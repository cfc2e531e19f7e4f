"""The expert path's steps as torch custom ops (permute, SwiGLU, grouped GEMMs on [E, N, K] expert stacks,
FP8 quantizers, combine): the C++/CUDA kernels on GPUs (bf16, hidden % 8 == 0), plain torch elsewhere. Fake implementations make them traceable by torch.compile and
capturable in CUDA graphs (no host synchronisation, shapes known from the arguments)."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch


def _native():
    try:
        from .. import _C
    except ImportError:
        return None
    return _C


def _fast(x: torch.Tensor) -> bool:
    return x.is_cuda and x.dtype == torch.bfloat16 and x.shape[-1] % 8 == 0 and _native() is not None


def _row_stride(x: torch.Tensor) -> int:
    """Elements between x's rows when the kernels can read it in place (16-byte aligned rows), else 0."""
    if x.stride(1) == 1 and x.stride(0) >= x.shape[1] and x.stride(0) % 8 == 0 and x.data_ptr() % 16 == 0:
        return x.stride(0)
    return 0


@torch.library.custom_op("dwdp::permute_rows", mutates_args=())
def permute_rows(x: torch.Tensor, src: torch.Tensor, dest: torch.Tensor, out_rows: int,
                 limit: Optional[torch.Tensor] = None) -> torch.Tensor:
    """out[dest[i]] = x[src[i]]; out is [out_rows, H]; rows no dest names are left unwritten. x may be a strided
    view (read in place where its rows are 16-byte aligned). limit [1] int64 (device): only i < limit move, a
    count the host never reads (the torch path moves every i: those rows are unwritten only by contract)."""
    out = x.new_empty(out_rows, x.shape[1])
    if _fast(x):
        stride = _row_stride(x)
        if not stride:
            x, stride = x.contiguous(), x.shape[1]
        src, dest = src.contiguous(), dest.contiguous()
        _native().permute_rows_bf16(x.data_ptr(), src.data_ptr(), dest.data_ptr(), src.numel(), x.shape[1],
                                    out.data_ptr(), torch.cuda.current_stream(x.device).cuda_stream,
                                    0 if limit is None else limit.contiguous().data_ptr(), stride)
    else:
        out.index_copy_(0, dest, x.index_select(0, src))
    return out


@permute_rows.register_fake
def _(x, src, dest, out_rows, limit=None):
    return x.new_empty(out_rows, x.shape[1])


@torch.library.custom_op("dwdp::combine", mutates_args=())
def combine(y: torch.Tensor, row: torch.Tensor, weight: torch.Tensor, k: int) -> torch.Tensor:
    """out[t] = sum_j weight[a] * y[row[a]], a = t*k + j, fp32 accumulation, row[a] < 0 skipped; [T, H]."""
    tokens = row.numel() // k
    out = y.new_empty(tokens, y.shape[1])
    if _fast(y) and y.is_contiguous():
        row, weight = row.contiguous(), weight.float().contiguous()
        _native().combine_bf16(y.data_ptr(), row.data_ptr(), weight.data_ptr(), tokens, k, y.shape[1],
                               out.data_ptr(), torch.cuda.current_stream(y.device).cuda_stream)
        return out
    keep = row >= 0
    rows = y.index_select(0, torch.where(keep, row, 0)).float() * weight.float()[:, None]
    # where, not a zero weight: a skipped row may point at a row nobody wrote (NaN * 0 is NaN)
    out.copy_(torch.where(keep[:, None], rows, 0.0).view(tokens, k, -1).sum(1))
    return out


@combine.register_fake
def _(y, row, weight, k):
    return y.new_empty(row.shape[0] // k, y.shape[1])


@torch.library.custom_op("dwdp::swiglu", mutates_args=())
def swiglu(h: torch.Tensor, up_first: bool = False, limit: Optional[torch.Tensor] = None) -> torch.Tensor:
    """h [m, 2I] (gate then up columns; up then gate with up_first) -> silu(gate) * up [m, I], fp32 math.
    limit [1] int64 (device): only rows < limit are computed by the kernel, the rest left unwritten."""
    m, inter = h.shape[0], h.shape[1] // 2
    if _fast(h) and inter % 8 == 0:
        h, out = h.contiguous(), h.new_empty(m, inter)
        _native().swiglu_bf16(h.data_ptr(), out.data_ptr(), m, inter, up_first,
                              torch.cuda.current_stream(h.device).cuda_stream,
                              0 if limit is None else limit.contiguous().data_ptr())
        return out
    a, b = h.float().chunk(2, dim=-1)
    gate, up = (b, a) if up_first else (a, b)
    return (torch.nn.functional.silu(gate) * up).to(h.dtype)


@swiglu.register_fake
def _(h, up_first=False, limit=None):
    return h.new_empty(h.shape[0], h.shape[1] // 2)


def cutlass_available(x: torch.Tensor) -> bool:
    """Our CUTLASS grouped GEMMs (built with nvidia-cutlass) can run on x's device (Hopper)."""
    native = _native()
    return (x.is_cuda and native is not None and hasattr(native, "grouped_gemm_bf16")
            and torch.cuda.get_device_capability(x.device) == (9, 0))


def fp8_available(x: torch.Tensor) -> bool:
    """The block-scaled FP8 grouped GEMM and quantizers are built and can run on x's device (Hopper)."""
    native = _native()
    return (x.is_cuda and native is not None and hasattr(native, "grouped_gemm_fp8")
            and torch.cuda.get_device_capability(x.device) == (9, 0))


def _workspace(native, groups: int, fp8: bool, device) -> torch.Tensor:
    return torch.empty(max(native.grouped_gemm_workspace_size(groups, fp8), 1), dtype=torch.uint8, device=device)


def _expert_stride(w: torch.Tensor) -> int:
    """Elements between experts of an [E, N, K] stack whose experts are row-major (dim 0 may be padded)."""
    n, k = w.shape[-2:]
    if w.stride(-1) != 1 or w.stride(-2) != k:
        raise ValueError(f"expert stack {tuple(w.shape)} with strides {w.stride()}: each expert must be row-major")
    return w.stride(0)


@torch.library.custom_op("dwdp::grouped_gemm", mutates_args=())
def grouped_gemm(a: torch.Tensor, row_ends: torch.Tensor, w: torch.Tensor, tile: int = 0) -> torch.Tensor:
    """out[r0:r1] = a[r0:r1] @ w[g]^T for each expert g, rows [ends[g-1], ends[g]); w [E, N, K] read in place
    (a composite view or an ordinary tensor); row_ends int64 [E] cumulative. One CUTLASS launch on Hopper
    (tile: 0 auto, 1 large, 2 small, 3 the first 128x128 tile); plain torch elsewhere. Rows past the last end are
    left unwritten: the MoE paths never read them, and zeroing the output would cost a pass per GEMM."""
    n = w.shape[1]
    out = a.new_empty(a.shape[0], n)
    if cutlass_available(a) and a.dtype == torch.bfloat16:
        native = _native()
        ws = _workspace(native, w.shape[0], False, a.device)
        native.grouped_gemm_bf16(a.contiguous().data_ptr(), row_ends.contiguous().data_ptr(), w.shape[0],
                                 w.data_ptr(), _expert_stride(w), out.data_ptr(), a.shape[0], n, a.shape[1], tile,
                                 ws.data_ptr(), ws.numel(), torch.cuda.current_stream(a.device).cuda_stream)
        return out
    _per_group(a, row_ends, [w[i].to(a.dtype) for i in range(w.shape[0])], out)
    return out


@grouped_gemm.register_fake
def _(a, row_ends, w, tile=0):
    return a.new_empty(a.shape[0], w.shape[1])


def _per_group(a: torch.Tensor, row_ends: torch.Tensor, experts: List[torch.Tensor], out: torch.Tensor) -> None:
    start = 0
    for g, end in enumerate(row_ends.tolist()):
        if end > start:
            out[start:end] = (a[start:end] @ experts[g].t()).to(out.dtype)
        start = end


# FP8 with DeepSeek-V3 block scales: activations in 1x128 groups, weights in 128x128 blocks.
FP8_BLOCK = 128
FP8_MAX = 448.0


def _quantize_torch(v: torch.Tensor):
    """v [m, k] (any float) -> (e4m3 [m, k], fp32 scales [m, k/128]); the kernels' rule, in plain torch."""
    m, k = v.shape
    blocks = v.float().reshape(m, k // FP8_BLOCK, FP8_BLOCK)
    amax = blocks.abs().amax(-1).clamp_min(1e-4)
    q = (blocks * (FP8_MAX / amax)[..., None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.reshape(m, k), amax / FP8_MAX


def _quantize_native(kernel: str, src: torch.Tensor, cols: int, *flags, **kw):
    """Runs one of the C++ 1x128 quantizers: src [m, *] bf16 -> (q [m, cols] e4m3, scales [m, cols/128])."""
    src, m = src.contiguous(), src.shape[0]
    q = torch.empty(m, cols, dtype=torch.float8_e4m3fn, device=src.device)
    s = torch.empty(m, cols // FP8_BLOCK, dtype=torch.float32, device=src.device)
    getattr(_native(), kernel)(src.data_ptr(), q.data_ptr(), s.data_ptr(), m, cols, *flags,
                               torch.cuda.current_stream(src.device).cuda_stream, **kw)
    return q, s


def _check_fp8_cols(k: int, what: str) -> None:
    if k % FP8_BLOCK:
        raise ValueError(f"{what}: {k} columns is not a multiple of the {FP8_BLOCK}-column FP8 scale block")


@torch.library.custom_op("dwdp::quantize_fp8", mutates_args=())
def quantize_fp8(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """x [m, k] bf16 -> (q [m, k] e4m3, scales [m, k/128] fp32): scale = max(amax, 1e-4) / 448 per block."""
    m, k = x.shape
    _check_fp8_cols(k, "quantize_fp8")
    if fp8_available(x) and x.dtype == torch.bfloat16:
        return _quantize_native("quantize_fp8_rows", x, k)
    return _quantize_torch(x)


@quantize_fp8.register_fake
def _(x):
    m, k = x.shape
    return (x.new_empty(m, k, dtype=torch.float8_e4m3fn), x.new_empty(m, k // FP8_BLOCK, dtype=torch.float32))


@torch.library.custom_op("dwdp::swiglu_quantize_fp8", mutates_args=())
def swiglu_quantize_fp8(h: torch.Tensor, up_first: bool = False,
                        limit: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """h [m, 2I] bf16 (gate, then up; up first with up_first) -> silu(gate) * up in fp32, quantized as
    `quantize_fp8`. limit [1] int64 (device): the kernel writes only rows < limit, a count the host never reads
    (the torch path computes every row: the others are unwritten only by contract)."""
    m, two_i = h.shape
    inter = two_i // 2
    _check_fp8_cols(inter, "swiglu_quantize_fp8")
    if fp8_available(h) and h.dtype == torch.bfloat16:
        return _quantize_native("swiglu_quantize_fp8", h, inter, up_first,
                                limit=0 if limit is None else limit.contiguous().data_ptr())
    a, b = h.float().chunk(2, dim=-1)
    gate, up = (b, a) if up_first else (a, b)
    return _quantize_torch(torch.nn.functional.silu(gate) * up)


@swiglu_quantize_fp8.register_fake
def _(h, up_first=False, limit=None):
    m, inter = h.shape[0], h.shape[1] // 2
    return (h.new_empty(m, inter, dtype=torch.float8_e4m3fn), h.new_empty(m, inter // FP8_BLOCK, dtype=torch.float32))


def quantize_weight_blocks(w: torch.Tensor):
    """[..., N, K] weights (N, K multiples of 128) -> (e4m3, fp32 scales [..., N/128, K/128]), one scale
    per 128x128 block: amax / 448, as DeepSeek-V3 checkpoints store them (weight_scale_inv)."""
    *lead, n, k = w.shape
    _check_fp8_cols(n, "quantize_weight_blocks")
    _check_fp8_cols(k, "quantize_weight_blocks")
    blocks = w.float().reshape(*lead, n // FP8_BLOCK, FP8_BLOCK, k // FP8_BLOCK, FP8_BLOCK)
    scale = blocks.abs().amax((-3, -1)).clamp_min(1e-12) / FP8_MAX
    q = (blocks / scale[..., :, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.reshape(w.shape), scale


def dequantize_blocks(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """[..., N, K] e4m3 with [..., N/128, K/128] scales -> fp32 (a partial last block takes its block's scale)."""
    n, k = w.shape[-2:]
    s = scale.float().repeat_interleave(FP8_BLOCK, -2)[..., :n, :].repeat_interleave(FP8_BLOCK, -1)[..., :k]
    return w.float() * s


@torch.library.custom_op("dwdp::grouped_gemm_fp8", mutates_args=())
def grouped_gemm_fp8(a: torch.Tensor, a_scales: torch.Tensor, row_ends: torch.Tensor, w: torch.Tensor,
                     w_scale: torch.Tensor, tile: int = 0) -> torch.Tensor:
    """`grouped_gemm` on block-scaled FP8: a [M, K] e4m3 with a_scales [M, K/128]; w [E, N, K] e4m3 with w_scale
    [E, N/128, K/128] fp32 (DeepSeek-V3's weight_scale_inv); bf16 out, rows past the last end unwritten."""
    n = w.shape[1]
    out = torch.empty(a.shape[0], n, dtype=torch.bfloat16, device=a.device)
    if fp8_available(a):
        native = _native()
        ws = _workspace(native, w.shape[0], True, a.device)
        native.grouped_gemm_fp8(a.contiguous().data_ptr(), a_scales.contiguous().data_ptr(),
                                row_ends.contiguous().data_ptr(), w.shape[0], w.data_ptr(), _expert_stride(w),
                                w_scale.data_ptr(), w_scale.stride(0), out.data_ptr(), a.shape[0], n, a.shape[1], tile,
                                ws.data_ptr(), ws.numel(), torch.cuda.current_stream(a.device).cuda_stream)
        return out
    a_deq = a.float() * a_scales.float().repeat_interleave(FP8_BLOCK, -1)[:, :a.shape[1]]
    _per_group(a_deq, row_ends, [dequantize_blocks(w[i], w_scale[i]) for i in range(w.shape[0])], out)
    return out


@grouped_gemm_fp8.register_fake
def _(a, a_scales, row_ends, w, w_scale, tile=0):
    return a.new_empty(a.shape[0], w.shape[1], dtype=torch.bfloat16)
