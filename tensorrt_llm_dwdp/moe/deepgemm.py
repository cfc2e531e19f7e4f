"""DeepGEMM (the optional `deepgemm` extra, SGLang's `sgl-deep-gemm` build) as an expert kernel on Hopper.

Its M-grouped contiguous GEMMs take one [M, K] row block with a per-row expert index (`m_indices`, int32): each
expert's rows start at a multiple of its M block (the "contiguous layout alignment"), pad rows are marked -1 and
never computed. We build that layout on the device from the routing (`build_layout`: torch ops only, no host
sync, a static row count from an upper bound, or with `exact` one host read of the padded row count), permute
the token rows into it with our permute, run GEMM1 -> our fused SwiGLU (+FP8 quantize) -> GEMM2, and combine back
through the matching row map.

Why exact rows by default: the GEMMs take M from the tensor's shape, and their persistent scheduler streams the A
and B tiles of every M block up to it, skipping only the math of pad blocks. At the static bound every expert
may add up to 127 pad rows, so at DeepSeek-V3 shapes the bound carries 129-254 blocks past the last expert's end
at 8K tokens: measured on an H100, the bound's GEMMs took 12% (balanced routing) to 31% (exact routing) longer
than the same GEMMs with M cut at the last expert's end. SGLang runs DeepGEMM's contiguous layout the same way, on
counts read on the host. The bound stays where the stream is being captured in a CUDA graph, and where a caller
promises no host sync (DEP's bound rows).

DeepGEMM JIT-compiles each kernel config with nvcc at first use; `warm_up` compiles every config a step can
launch, from setup code, so no compile lands in a timed step. The compile cache is `DWDP_DEEPGEMM_CACHE`
(passed on as the library's `DG_JIT_CACHE_DIR`, set before import), else the library's default.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Optional, Union

import torch

from . import ops
from .rows import QuantizedRows
from .weights import ExpertWeights

CACHE_ENV = "DWDP_DEEPGEMM_CACHE"
PACKAGE = "sgl-deep-gemm==0.1.5.post1"  # and apache-tvm-ffi==0.1.11: `pip install tensorrt_llm_dwdp[deepgemm]`
BUILT_FOR_TORCH = "2.11"  # the torch sgl-deep-gemm 0.1.5.post1's prebuilt library links against
# sgl-deep-gemm 0.1.5.post1 on sm90: get_mk_alignment_for_contiguous_layout() is 128 (the GEMMs' M block); the
# layout asks the library when it is loaded and uses this where it is not (CPU tests)
DEFAULT_ALIGN = 128
_NAMES = ("m_grouped_fp8_gemm_nt_contiguous", "m_grouped_bf16_gemm_nt_contiguous",
          "get_mk_alignment_for_contiguous_layout")

_module = None
_import_error: Optional[str] = None


def _cuda_home() -> Optional[str]:
    """Where DeepGEMM's JIT finds nvcc (its own rule: CUDA_HOME, CUDA_PATH, nvcc on PATH, /usr/local/cuda)."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home is None:
        nvcc = shutil.which("nvcc")
        home = os.path.dirname(os.path.dirname(nvcc)) if nvcc else "/usr/local/cuda"
    return home if os.path.exists(os.path.join(home, "bin", "nvcc")) else None


def load(retry: bool = False):
    """The `deep_gemm` module, imported once (None when it cannot be: `import_problem` says why). retry: forget
    an earlier outcome and try again (after installing the extra, or changing CUDA_HOME)."""
    global _module, _import_error
    if retry:
        _module = _import_error = None
    if _module is not None or _import_error is not None:
        return _module
    if _cuda_home() is None:
        _import_error = ("no nvcc for its JIT (CUDA_HOME, CUDA_PATH, nvcc on PATH or /usr/local/cuda/bin/nvcc). "
                         "Fix: install the CUDA toolkit or set CUDA_HOME")
        return None
    cache = os.environ.get(CACHE_ENV)
    if cache:  # read by the library's JIT; set before the import so its first compile already uses it
        os.environ["DG_JIT_CACHE_DIR"] = cache
    try:
        import deep_gemm
    except ModuleNotFoundError as e:
        _import_error = f"not installed ({e.name} missing). Fix: pip install tensorrt_llm_dwdp[deepgemm]"
        return None
    except Exception as e:  # noqa: BLE001 - a prebuilt library fails to load in many ways; each is reported
        torch_note = "" if torch.__version__.startswith(BUILT_FOR_TORCH) else \
            f"; {PACKAGE} is built for torch {BUILT_FOR_TORCH}, this is torch {torch.__version__}"
        _import_error = f"import failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}){torch_note}"
        return None
    missing = [n for n in _NAMES if not hasattr(deep_gemm, n)]
    if missing:
        _import_error = f"deep_gemm {getattr(deep_gemm, '__version__', '?')} lacks {', '.join(missing)}; " \
                        f"Fix: pip install {PACKAGE}"
        return None
    _module = deep_gemm
    return _module


def import_problem() -> Optional[str]:
    """Why the last `load` could not import DeepGEMM (None if it did, or was not tried)."""
    return _import_error


def unavailable(device=None) -> Optional[str]:
    """None when DeepGEMM's grouped GEMMs can run on `device` (default: the current GPU), else why not."""
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    cap = torch.cuda.get_device_capability(device)
    if cap != (9, 0):
        return f"its grouped GEMMs are used on Hopper (sm_90) only; this GPU is sm_{cap[0]}{cap[1]}"
    if load() is None:
        return _import_error
    return None


def alignment() -> int:
    dg = _module
    return int(dg.get_mk_alignment_for_contiguous_layout()) if dg is not None else DEFAULT_ALIGN


def check(fp8: bool, x: torch.Tensor, weights: ExpertWeights) -> Optional[str]:
    """None if DeepGEMM (FP8 block-scaled or BF16) can run activations like x on these weights, else why not.
    Weight checks first: they name the reason on any machine."""
    if fp8 and (not weights.is_fp8 or weights.w13_scale is None or weights.w2_scale is None):
        return "weights are not FP8 e4m3 with DeepSeek-V3 128x128 block scales (w13_scale, w2_scale)"
    if not fp8 and weights.w13.dtype != torch.bfloat16:
        return f"weights are {weights.w13.dtype}; DeepGEMM's BF16 grouped GEMM takes bfloat16"
    # the library reads each [E, N, K] stack as one [E*N, K] matrix (and Hopper's weight scales contiguous)
    for name in ("w13", "w2"):
        padded = weights.padded(name)
        if padded:
            return f"{padded}; DeepGEMM takes dense expert stacks"
        s = getattr(weights, name + "_scale")
        if fp8 and not s.is_contiguous():
            return f"{name}_scale is not contiguous; DeepGEMM's sm90 FP8 kernel takes contiguous weight scales"
    dims = (*weights.w13.shape[1:], *weights.w2.shape[1:])
    if any(d % 128 for d in dims):
        return f"GEMM dims {dims} are not all multiples of 128 (DeepGEMM's N/K blocks and the FP8 scale blocks)"
    if not x.is_cuda or weights.device != x.device:
        return f"activations on {x.device}, weights on {weights.device}: DeepGEMM runs on one GPU"
    if x.dtype != torch.bfloat16:
        return f"activations are {x.dtype}; the expert path takes bfloat16"
    return unavailable(x.device)


@dataclass(frozen=True)
class Layout:
    """Assignments in DeepGEMM's contiguous grouped layout, rows [0, rows) (a multiple of the alignment).

    src[i], dest[i]: sorted assignment i comes from token row src[i] and lands in layout row dest[i] (`rows`, one
    row past the end, for "no expert": the buffers the permute writes have rows + 1 rows); m_indices [rows] int32:
    each row's expert, -1 for pad rows; row_of[a] [T*k]: assignment a's layout row (-1: none), what the combine
    reads; used [1] int64: rows up to the last expert's padded end (the SwiGLU stops there; with exact rows it
    equals rows); real [1] int64: the number of real assignments (the permute moves that many)."""

    src: torch.Tensor
    dest: torch.Tensor
    m_indices: torch.Tensor
    row_of: torch.Tensor
    used: torch.Tensor
    real: torch.Tensor
    rows: int


def layout_rows(assignments: int, num_experts: int, align: int) -> int:
    """Static upper bound of the layout's rows: every expert may waste up to align-1 pad rows; rounded to a
    multiple of the alignment, so the M a GEMM sees is one `warm_up` compiled for."""
    bound = assignments + num_experts * (align - 1)
    return -(-bound // align) * align


def build_layout(topk_ids: torch.Tensor, num_experts: int, align: int, assignments: Optional[int] = None,
                 exact: bool = False) -> Layout:
    """topk_ids [T, k] (values 0..E, E = no expert) -> the contiguous layout, on topk_ids' device. assignments: the
    number of ids below E when the caller knows it on the host: the static bound is sized to them, not to T*k.
    exact: rows = the last expert's padded end, read on the host (one device sync; see the module's note);
    else the static bound of `layout_rows` (no sync, capturable)."""
    flat = topk_ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    if assignments is not None:
        order = order[:assignments]  # "no expert" sorts last
    n, dev = order.numel(), flat.device
    expert = flat.index_select(0, order)  # sorted, "no expert" (E) last
    experts = torch.arange(num_experts + 1, device=dev)
    # searchsorted, unlike bincount, never syncs with the host
    ends = torch.searchsorted(expert, experts, right=True)  # [E+1]: the last is n
    starts = torch.cat([ends.new_zeros(1), ends[:-1]])
    padded = (ends - starts + align - 1) // align * align
    padded = torch.where(experts < num_experts, padded, 0)  # "no expert" takes no rows (no host value: capturable)
    pstart = torch.cumsum(padded, 0) - padded
    used = pstart[num_experts - 1:num_experts] + padded[num_experts - 1:num_experts]
    rows = int(used) if exact else layout_rows(n, num_experts, align)
    i = torch.arange(n, device=dev)
    dest = pstart.index_select(0, expert) + i - starts.index_select(0, expert)
    dest = torch.where(expert < num_experts, dest, rows)
    m_indices = torch.full((rows + 1,), -1, dtype=torch.int32, device=dev)
    m_indices.index_copy_(0, dest, expert.to(torch.int32))  # the dump row `rows` takes the "no expert" writes
    row_of = torch.full((flat.numel(),), -1, dtype=torch.long, device=dev)
    row_of.index_copy_(0, order, torch.where(dest < rows, dest, -1))
    return Layout(order // topk_ids.shape[1], dest, m_indices[:rows], row_of, used,
                  ends[num_experts - 1:num_experts], rows)


def move_rows(t: torch.Tensor, lay: Layout, src: Optional[torch.Tensor] = None) -> torch.Tensor:
    """t[src[i]] -> row dest[i] of a [rows + 1, *] buffer, any dtype (our bf16 permute kernel where a row is 16
    bytes aligned, reading a strided t in place); src defaults to the layout's. Returns the first `rows` rows. Pad
    rows are left unwritten: the GEMMs' rows are independent and nothing reads a pad row's result."""
    src = lay.src if src is None else src
    width = t.shape[1] * t.element_size()
    if width % 16 == 0:
        moved = ops.permute_rows(t.view(torch.bfloat16), src, lay.dest, lay.rows + 1, lay.real)
        return moved.view(t.dtype)[:lay.rows]
    out = t.new_empty(lay.rows + 1, t.shape[1])
    out.view(torch.uint8).index_copy_(0, lay.dest, t.view(torch.uint8).index_select(0, src))
    return out[:lay.rows]


def gemm_fp8(a: torch.Tensor, a_scales: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor,
             m_indices: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[M, K] e4m3 (1x128 fp32 scales [M, K/128], row-major: the library makes them MN-major and TMA-aligned
    itself on sm90) x [E, N, K] e4m3 (128x128 fp32 scales [E, N/128, K/128]) -> [M, N] bf16, rows by m_indices.
    Conventions of sgl-deep-gemm 0.1.5.post1: operands as (data, scales) pairs, NT (K-major) layout."""
    if out is None:
        out = torch.empty(a.shape[0], w.shape[1], dtype=torch.bfloat16, device=a.device)
    # ensure_zero_padding=False: our pad rows hold whatever the buffer held (nothing reads their results)
    _module.m_grouped_fp8_gemm_nt_contiguous((a, a_scales), (w, w_scale), out, m_indices,
                                             ensure_zero_padding=False)
    return out


def gemm_bf16(a: torch.Tensor, w: torch.Tensor, m_indices: torch.Tensor,
              out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[M, K] bf16 x [E, N, K] bf16 -> [M, N] bf16, rows by m_indices (sgl-deep-gemm 0.1.5.post1, NT)."""
    if out is None:
        out = torch.empty(a.shape[0], w.shape[1], dtype=torch.bfloat16, device=a.device)
    _module.m_grouped_bf16_gemm_nt_contiguous(a, w, out, m_indices, ensure_zero_padding=False)
    return out


def moe_mlp(x: Union[torch.Tensor, QuantizedRows], topk_ids: torch.Tensor, topk_weights: torch.Tensor,
            weights: ExpertWeights, fp8: bool, rows: Optional[torch.Tensor] = None, gemm1=None,
            gemm2=None, assignments: Optional[int] = None, exact: Optional[bool] = None) -> torch.Tensor:
    """The routed experts of x (x[rows] where given) through the contiguous layout: [M, H] in x's dtype. FP8
    takes QuantizedRows (DEP's FP8 dispatch) as they are. x[rows] is read in place (DEP's receive view is
    never copied whole): the layout's moves read the rows they need.
    gemm1/gemm2 (a, a_scales or None, w, w_scale or None, m_indices) -> out replace DeepGEMM (tests run the
    layout and combine on CPU with a plain stand-in). assignments, exact: see build_layout; exact None: exact
    rows unless the stream is being captured in a CUDA graph."""
    k = topk_ids.shape[1]
    if exact is None:
        exact = exact_by_default(topk_ids.device)
    lay = build_layout(topk_ids, weights.num_experts, alignment() if gemm1 is None else DEFAULT_ALIGN, assignments,
                       exact)
    if not lay.rows:  # exact rows, and no row routed to these experts
        return torch.zeros(topk_ids.shape[0], weights.w2.shape[1], dtype=x.dtype, device=x.device)
    src = lay.src if rows is None else rows.index_select(0, lay.src)
    up_first = weights.up_first
    if fp8:
        if isinstance(x, QuantizedRows):  # quantized once by their DEP sender
            xq, xs = x.q, x.scales
        else:  # the computed rows quantized once, then moved with their scales
            xq, xs = ops.quantize_fp8(x if rows is None else x.index_select(0, rows))
            src = lay.src
        a, a_s = move_rows(xq, lay, src), move_rows(xs, lay, src)
        h = gemm1(a, a_s, weights.w13, weights.w13_scale, lay.m_indices) if gemm1 else \
            gemm_fp8(a, a_s, weights.w13, weights.w13_scale, lay.m_indices)
        aq, as_ = ops.swiglu_quantize_fp8(h, up_first, lay.used)  # pad rows past the last expert: none
        y = gemm2(aq, as_, weights.w2, weights.w2_scale, lay.m_indices) if gemm2 else \
            gemm_fp8(aq, as_, weights.w2, weights.w2_scale, lay.m_indices)
    else:
        a = move_rows(x, lay, src)
        h = gemm1(a, None, weights.w13, None, lay.m_indices) if gemm1 else gemm_bf16(a, weights.w13, lay.m_indices)
        act = ops.swiglu(h, up_first, lay.used)
        y = gemm2(act, None, weights.w2, None, lay.m_indices) if gemm2 else gemm_bf16(act, weights.w2, lay.m_indices)
    return ops.combine(y, lay.row_of, topk_weights.reshape(-1), k).to(x.dtype)


def exact_by_default(device) -> bool:
    """Exact rows (one host read per layer) unless the current stream is being captured in a CUDA graph."""
    return not (torch.device(device).type == "cuda" and torch.cuda.is_current_stream_capturing())


def warm_up(weights: ExpertWeights, max_tokens: int, top_k: int, fp8: Optional[bool] = None) -> int:
    """JIT-compile every DeepGEMM kernel a step of up to `max_tokens` token rows (top_k assignments each) can
    launch on weights of this shape; returns the number of GEMM calls made. Call it from setup code.

    sgl-deep-gemm 0.1.5.post1 on sm90 compiles N and K into each kernel and picks its block N and TMA multicast
    from M (block M is fixed to the alignment): a step's M is always a multiple of the alignment, exact or at
    the bound (`layout_rows`), so calling both GEMMs at every such M up to the bound compiles each config a step
    can hit.
    Every row is marked -1 here, so the calls compute nothing; the buffers (outputs included) are allocated once, at
    the bound, so the caching allocator never holds a ladder of growing blocks."""
    if fp8 is None:
        fp8 = weights.is_fp8
    if load() is None:
        raise RuntimeError(f"DeepGEMM is unavailable: {_import_error}")
    align, dev = alignment(), weights.device
    bound = layout_rows(max_tokens * top_k, weights.num_experts, align)
    hidden, inter = weights.w13.shape[2], weights.w2.shape[2]
    m_indices = torch.full((bound,), -1, dtype=torch.int32, device=dev)
    dtype = torch.float8_e4m3fn if fp8 else torch.bfloat16
    a1 = torch.zeros(bound, hidden, dtype=dtype, device=dev)
    a2 = torch.zeros(bound, inter, dtype=dtype, device=dev)
    s1 = torch.ones(bound, hidden // 128, dtype=torch.float32, device=dev)
    s2 = torch.ones(bound, inter // 128, dtype=torch.float32, device=dev)
    o1 = torch.empty(bound, weights.w13.shape[1], dtype=torch.bfloat16, device=dev)
    o2 = torch.empty(bound, weights.w2.shape[1], dtype=torch.bfloat16, device=dev)
    calls = 0
    for m in range(align, bound + 1, align):
        if fp8:
            gemm_fp8(a1[:m], s1[:m], weights.w13, weights.w13_scale, m_indices[:m], o1[:m])
            gemm_fp8(a2[:m], s2[:m], weights.w2, weights.w2_scale, m_indices[:m], o2[:m])
        else:
            gemm_bf16(a1[:m], weights.w13, m_indices[:m], o1[:m])
            gemm_bf16(a2[:m], weights.w2, m_indices[:m], o2[:m])
        calls += 2
    torch.cuda.synchronize(dev)
    return calls


def describe() -> str:
    """One line for `trtllm-dwdp doctor`."""
    reason = unavailable()
    if reason is not None:
        return f"unavailable ({reason})"
    cache = os.environ.get("DG_JIT_CACHE_DIR", "the library's default")
    return f"available (deep_gemm {getattr(_module, '__version__', '?')}, JIT cache {cache})"

