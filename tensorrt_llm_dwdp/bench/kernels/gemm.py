"""Expert GEMMs and the expert MLP on the hooks' composite tensors vs an ordinary allocation vs dense cuBLAS, on
the selected kernel (`gemm` rows, what the simulator calibrates from) and on every kernel of the dtype side by side
(`kernels` rows: DeepGEMM, our CUTLASS kernels, torch._grouped_mm; a kernel that cannot run a tensor names why)."""

from __future__ import annotations

from typing import Dict, List

import torch

from ...config import WeightDtype, is_fp8

from ...moe import ExpertKernel, ExpertWeights, deepgemm, expert_compute, ops, select
from ...moe.kernels import check
from ...moe.kernels import sort_by_expert
from .setup import SHAPES, bench_ms, mlp_flops, routing


def ordinary_copy(w: ExpertWeights) -> ExpertWeights:
    """The same experts in one ordinary (cudaMalloc'd, contiguous) allocation per tensor."""
    c = lambda t: None if t is None else t.contiguous().clone()  # noqa: E731
    return ExpertWeights(c(w.w13), c(w.w2), c(w.w13_scale), c(w.w2_scale), w.w13_order)


def gemms(x: torch.Tensor, ids: torch.Tensor, w: ExpertWeights, kernel: ExpertKernel):
    """The layer's two expert GEMMs alone (inputs sorted and quantized beforehand), on `kernel`."""
    s = sort_by_expert(ids, w.num_experts)
    a = ops.permute_rows(x, s.order // ids.shape[1], torch.arange(s.order.numel(), device=x.device), s.order.numel())
    inter = w.w2.shape[2]
    act = torch.randn(a.shape[0], inter, device=x.device, dtype=torch.bfloat16)
    if kernel in (ExpertKernel.DEEPGEMM_FP8, ExpertKernel.DEEPGEMM_BF16):
        return _deepgemm_gemms(x, ids, act, w, kernel is ExpertKernel.DEEPGEMM_FP8)
    if kernel is ExpertKernel.CUTLASS_FP8:
        (aq, as_), (hq, hs) = ops.quantize_fp8(a), ops.quantize_fp8(act)
        return lambda: (ops.grouped_gemm_fp8(aq, as_, s.ends, w.w13, w.w13_scale),
                        ops.grouped_gemm_fp8(hq, hs, s.ends, w.w2, w.w2_scale))
    if kernel is ExpertKernel.GROUPED_MM:
        offs = s.ends.to(torch.int32)
        return lambda: (torch._grouped_mm(a, w.w13.transpose(-2, -1), offs=offs),
                        torch._grouped_mm(act, w.w2.transpose(-2, -1), offs=offs))
    return lambda: (ops.grouped_gemm(a, s.ends, w.w13), ops.grouped_gemm(act, s.ends, w.w2))


def _deepgemm_gemms(x, ids, act, w: ExpertWeights, fp8: bool):
    """DeepGEMM's two grouped GEMMs on its contiguous layout (built, permuted and quantized beforehand)."""
    lay = deepgemm.build_layout(ids, w.num_experts, deepgemm.alignment())
    a, h = deepgemm.move_rows(x, lay), deepgemm.move_rows(act, lay)
    if fp8:
        (aq, as_), (hq, hs) = ops.quantize_fp8(a), ops.quantize_fp8(h)
        return lambda: (deepgemm.gemm_fp8(aq, as_, w.w13, w.w13_scale, lay.m_indices),
                        deepgemm.gemm_fp8(hq, hs, w.w2, w.w2_scale, lay.m_indices))
    return lambda: (deepgemm.gemm_bf16(a, w.w13, lay.m_indices), deepgemm.gemm_bf16(h, w.w2, lay.m_indices))


# every kernel of a weight dtype, measured side by side
CANDIDATES = {True: (ExpertKernel.DEEPGEMM_FP8, ExpertKernel.CUTLASS_FP8),
              False: (ExpertKernel.GROUPED_MM, ExpertKernel.CUTLASS_BF16, ExpertKernel.DEEPGEMM_BF16)}


def side_by_side(x, ids, wts, comp: ExpertWeights, plain: ExpertWeights, fp8: bool, flops: float, peak: float,
                 base: Dict) -> List[Dict]:
    """One row per kernel: its GEMMs on the composite and on the ordinary tensors, its whole MLP (on the
    composite tensors where it runs them, else on the ordinary ones), or why it cannot run either."""
    out = []
    for kernel in CANDIDATES[fp8]:
        why_comp, why_plain = check(kernel, x, comp), check(kernel, x, plain)
        row = dict(base, kernel=kernel.value, composite_ms=None, ordinary_ms=None, mlp_ms=None, note="")
        if why_plain is not None and why_comp is not None:
            row["note"] = why_plain
            out.append(row)
            print(f"  {kernel.value}: cannot run ({why_plain})", flush=True)
            continue
        if why_comp is None:
            row["composite_ms"] = bench_ms(gemms(x, ids, comp, kernel))
        else:
            row["note"] = f"composite: {why_comp}"
        if why_plain is None:
            row["ordinary_ms"] = bench_ms(gemms(x, ids, plain, kernel))
        w = comp if why_comp is None else plain
        row["mlp_ms"] = bench_ms(lambda: expert_compute(x, ids, wts, w, kernel=kernel))
        row["mlp_on"] = "composite" if why_comp is None else "ordinary"
        t = row["composite_ms"] or row["ordinary_ms"]
        row.update(gemm_tflops=flops / t / 1e9, gemm_of_peak=flops / t / 1e9 / peak)
        out.append(row)
    return out


def kernel_ratios(rows: List[Dict]) -> List[Dict]:
    """DeepGEMM over the kernel it competes with, GEMMs and MLP: FP8 vs our CUTLASS FP8, BF16 vs torch._grouped_mm
    (> 1: DeepGEMM faster), each pair on the same tensors (`on`); no MLP ratio where they ran it on different ones."""
    by = {}
    for r in rows:
        by.setdefault((r["shape"], r["dtype"], r["routing"], r["tokens"]), {})[r["kernel"]] = r
    out = []
    for (shape, dtype, routed, tokens), ks in by.items():
        for dg, other in (("deepgemm_fp8", "cutlass_fp8"), ("deepgemm_bf16", "grouped_mm")):
            a, b = ks.get(dg), ks.get(other)
            # one thing changes: the kernel. Both on composite tensors where both run them, else both on ordinary
            on = next((kind for kind in ("composite", "ordinary") if a and b and a[f"{kind}_ms"] and b[f"{kind}_ms"]),
                      None)
            if on is None:
                continue
            row = {"shape": shape, "dtype": dtype, "routing": routed, "tokens": tokens, "vs": other, "on": on,
                   "gemm_speedup": b[f"{on}_ms"] / a[f"{on}_ms"], "mlp_speedup": None}
            if a["mlp_on"] == b["mlp_on"]:  # the whole MLP only where both ran it on the same tensors
                row["mlp_speedup"] = b["mlp_ms"] / a["mlp_ms"]
            out.append(row)
    return out


def dense(tokens: int, shape: str, fp8: bool):
    """Dense GEMMs of the expert MLP's FLOPs ([T*k, H] x [H, 2I], [T*k, I] x [I, H]) through cuBLAS."""
    hidden, inter, _, k = SHAPES[shape]
    a = torch.randn(tokens * k, hidden, device="cuda", dtype=torch.bfloat16)
    act = torch.randn(tokens * k, inter, device="cuda", dtype=torch.bfloat16)
    w13 = torch.randn(2 * inter, hidden, device="cuda", dtype=torch.bfloat16)
    w2 = torch.randn(hidden, inter, device="cuda", dtype=torch.bfloat16)
    if not fp8:
        return lambda: (a @ w13.t(), act @ w2.t())
    one = torch.ones((), device="cuda")
    q = [t.to(torch.float8_e4m3fn) for t in (a, w13, act, w2)]
    mm = lambda x, w: torch._scaled_mm(x, w.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)  # noqa: E731
    return lambda: (mm(q[0], q[1]), mm(q[2], q[3]))


def run(hooks, shape: str, dtype: str, tokens_list: List[int], routings: List[str], peaks: Dict,
        kernels_out: List[Dict]) -> List[Dict]:
    """The selected kernel's rows; every kernel's side-by-side rows are appended to kernels_out."""
    hidden, _, experts, k = SHAPES[shape]
    fp8 = is_fp8(dtype)
    peak = peaks["fp8_tflops" if fp8 else "bf16_tflops"]
    hooks.begin_step()
    comp = hooks.layer_weights(hooks.shape.ids[0])
    torch.cuda.current_stream().synchronize()  # the pull has landed: time the GEMMs, not the wait
    plain = ordinary_copy(comp)
    gen = torch.Generator(device="cuda").manual_seed(1)
    rows = []
    for routed in routings:
        for tokens in tokens_list:
            x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16, generator=gen)
            ids, wts = routing(tokens, experts, k, routed, gen)
            kernel = select(x, comp).kernel
            flops = mlp_flops(tokens, shape)
            t_comp = bench_ms(gemms(x, ids, comp, kernel))
            t_plain = bench_ms(gemms(x, ids, plain, kernel))
            t_dense = bench_ms(dense(tokens, shape, fp8))
            t_mlp = bench_ms(lambda: expert_compute(x, ids, wts, comp))
            row = {"shape": shape, "dtype": dtype, "routing": routed, "tokens": tokens, "kernel": kernel.value,
                   "composite_ms": t_comp, "ordinary_ms": t_plain, "dense_ms": t_dense, "mlp_ms": t_mlp,
                   "composite_over_ordinary": t_plain / t_comp, "gemm_tflops": flops / t_comp / 1e9,
                   "gemm_of_peak": flops / t_comp / 1e9 / peak, "gemm_over_dense": t_dense / t_comp}
            if not fp8:  # our CUTLASS kernel on the same composite tensors: the kernel the old default ran
                t_cut = bench_ms(lambda: expert_compute(x, ids, wts, comp, kernel=ExpertKernel.CUTLASS_BF16))
                row.update(mlp_cutlass_ms=t_cut, mlp_speedup_over_cutlass=t_cut / t_mlp)
            rows.append(row)
            kernels_out += side_by_side(x, ids, wts, comp, plain, fp8, flops, peak,
                                        {"shape": shape, "dtype": dtype, "routing": routed, "tokens": tokens,
                                         "dense_ms": t_dense})
            print(f"  gemm {shape} {dtype} {routed} {tokens}: composite {t_comp:.2f} ms, ordinary {t_plain:.2f}, "
                  f"dense {t_dense:.2f}, MLP {t_mlp:.2f}", flush=True)
    hooks.layer_done(hooks.shape.ids[0])
    for lid in hooks.shape.ids[1:]:
        hooks.layer_weights(lid)
        hooks.layer_done(lid)
    hooks.end_step()
    return rows


def fp8_over_bf16(rows: List[Dict]) -> List[Dict]:
    """FP8 MLP speed over the BF16 MLP at the same shape, routing and tokens (rows of one run)."""
    bf16 = {(r["shape"], r["routing"], r["tokens"]): r["mlp_ms"] for r in rows if r["dtype"] == WeightDtype.BF16}
    return [{"shape": r["shape"], "routing": r["routing"], "tokens": r["tokens"],
             "fp8_mlp_over_bf16": bf16[(r["shape"], r["routing"], r["tokens"])] / r["mlp_ms"]}
            for r in rows if is_fp8(r["dtype"]) and (r["shape"], r["routing"], r["tokens"]) in bf16]
