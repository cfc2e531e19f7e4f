"""Expert GEMMs and the expert MLP on the hooks' composite tensors vs an ordinary allocation vs dense cuBLAS, on
the selected kernel (`gemm` rows, what the simulator calibrates from) and on every kernel of the dtype side by side
(`kernels` rows: DeepGEMM, our CUTLASS kernels, torch._grouped_mm; a kernel that cannot run a tensor names why;
DeepGEMM twice: with exact rows, its eager default, and `_bound`, at the static bound a CUDA graph or DEP's bound
rows run); `rows` rows: the same FLOPs spread over fewer experts, to show how a grouped GEMM's rate depends on the
rows each expert gets. Everything of one configuration is timed in turns (`bench_interleaved`), so its ratios are
like for like."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch

from ...config import WeightDtype, is_fp8
from ...moe import ExpertKernel, ExpertWeights, deepgemm, expert_compute, ops, select
from ...moe.kernels import check, sort_by_expert
from .setup import SHAPES, bench_interleaved, mlp_flops, routing

Pair = Tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]  # the layer's GEMM1 (w13) and GEMM2 (w2)
# every kernel of a weight dtype, measured side by side
CANDIDATES = {True: (ExpertKernel.DEEPGEMM_FP8, ExpertKernel.CUTLASS_FP8),
              False: (ExpertKernel.GROUPED_MM, ExpertKernel.CUTLASS_BF16, ExpertKernel.DEEPGEMM_BF16)}
KINDS = ("composite", "ordinary")
_DEEPGEMM = (ExpertKernel.DEEPGEMM_FP8, ExpertKernel.DEEPGEMM_BF16)


def ordinary_copy(w: ExpertWeights) -> ExpertWeights:
    """The same experts in one ordinary (cudaMalloc'd, contiguous) allocation per tensor."""
    c = lambda t: None if t is None else t.contiguous().clone()  # noqa: E731
    return ExpertWeights(c(w.w13), c(w.w2), c(w.w13_scale), c(w.w2_scale), w.w13_order)


def variants(kernel: ExpertKernel) -> List[Tuple[str, Optional[bool]]]:
    """(row name, exact) of each way a kernel runs: DeepGEMM with exact rows and at the static bound
    (`moe.deepgemm`); the others read their row counts on the device and run one way."""
    if kernel in _DEEPGEMM:
        return [(kernel.value, True), (kernel.value + "_bound", False)]
    return [(kernel.value, None)]


def gemms(x: torch.Tensor, ids: torch.Tensor, weights: List[ExpertWeights], kernel: ExpertKernel,
          exact: Optional[bool] = True) -> List[Pair]:
    """The layer's two expert GEMMs alone on `kernel`, one pair per weights object; the inputs are sorted, permuted
    and quantized once, beforehand, and shared by the pairs. exact: DeepGEMM's rows (`variants`)."""
    w0 = weights[0]
    act = torch.randn(ids.numel(), w0.w2.shape[2], device=x.device, dtype=torch.bfloat16)
    if kernel in _DEEPGEMM:
        lay = deepgemm.build_layout(ids, w0.num_experts, deepgemm.alignment(), exact=exact is not False)
        a, h = deepgemm.move_rows(x, lay), deepgemm.move_rows(act, lay)
        if kernel is ExpertKernel.DEEPGEMM_FP8:
            (aq, as_), (hq, hs) = ops.quantize_fp8(a), ops.quantize_fp8(h)
            return [(lambda w=w: deepgemm.gemm_fp8(aq, as_, w.w13, w.w13_scale, lay.m_indices),
                     lambda w=w: deepgemm.gemm_fp8(hq, hs, w.w2, w.w2_scale, lay.m_indices)) for w in weights]
        return [(lambda w=w: deepgemm.gemm_bf16(a, w.w13, lay.m_indices),
                 lambda w=w: deepgemm.gemm_bf16(h, w.w2, lay.m_indices)) for w in weights]
    s = sort_by_expert(ids, w0.num_experts)
    a = ops.permute_rows(x, s.order // ids.shape[1], torch.arange(s.order.numel(), device=x.device), s.order.numel())
    if kernel is ExpertKernel.CUTLASS_FP8:
        (aq, as_), (hq, hs) = ops.quantize_fp8(a), ops.quantize_fp8(act)
        return [(lambda w=w: ops.grouped_gemm_fp8(aq, as_, s.ends, w.w13, w.w13_scale),
                 lambda w=w: ops.grouped_gemm_fp8(hq, hs, s.ends, w.w2, w.w2_scale)) for w in weights]
    if kernel is ExpertKernel.GROUPED_MM:
        offs = s.ends.to(torch.int32)
        return [(lambda w=w: torch._grouped_mm(a, w.w13.transpose(-2, -1), offs=offs),
                 lambda w=w: torch._grouped_mm(act, w.w2.transpose(-2, -1), offs=offs)) for w in weights]
    return [(lambda w=w: ops.grouped_gemm(a, s.ends, w.w13),
             lambda w=w: ops.grouped_gemm(act, s.ends, w.w2)) for w in weights]


def both(pair: Pair) -> Callable[[], None]:
    return lambda: (pair[0](), pair[1]())


def _runs_on(kernel: ExpertKernel, x, comp: ExpertWeights, plain: ExpertWeights) -> Tuple[List[str], Dict]:
    """The tensors (composite, ordinary) `kernel` can run activations like x on, and why not on the others."""
    why = {"composite": check(kernel, x, comp), "ordinary": check(kernel, x, plain)}
    return [kind for kind in KINDS if why[kind] is None], why


def measure(x, ids, wts, comp: ExpertWeights, plain: ExpertWeights, fp8: bool, dense_fn) -> Tuple[Dict, Dict]:
    """One configuration, every kernel of the dtype, timed in turns: its GEMMs on each tensor kind it runs, each
    GEMM alone and its whole MLP (on the composite tensors where it runs them), and dense cuBLAS of equal FLOPs.
    Returns ({name: ms}, {row name (`variants`): (kinds it ran on, why not on the others)})."""
    fns, ran = {"dense": dense_fn}, {}
    chosen = select(x, comp, ids.numel()).kernel
    for kernel in CANDIDATES[fp8] + tuple(k for k in (chosen,) if k not in CANDIDATES[fp8]):
        on, why = _runs_on(kernel, x, comp, plain)
        if not on:
            ran[kernel.value] = (on, why)
            print(f"  {kernel.value}: cannot run ({why['ordinary']})", flush=True)
            continue
        for name, exact in variants(kernel):
            ran[name] = (on, why)
            pairs = gemms(x, ids, [comp if kind == "composite" else plain for kind in on], kernel, exact)
            for kind, pair in zip(on, pairs):
                fns[f"{name}/{kind}"] = both(pair)
            fns[f"{name}/gemm1"], fns[f"{name}/gemm2"] = pairs[0]
            w = comp if on[0] == "composite" else plain
            fns[f"{name}/mlp"] = lambda w=w, kernel=kernel, exact=exact: expert_compute(x, ids, wts, w, kernel=kernel,
                                                                                        exact=exact)
    return bench_interleaved(fns), ran


def kernel_rows(t: Dict, ran: Dict, flops: float, peak: float, base: Dict) -> List[Dict]:
    """One `kernels` row per kernel: its GEMMs on the composite and on the ordinary tensors, each GEMM's share of
    the peak (on the tensors its MLP ran on), its MLP, or why it cannot run either."""
    out = []
    for name, (on, why) in ran.items():
        row = dict(base, kernel=name, note="", **{f"{kind}_ms": t.get(f"{name}/{kind}") for kind in KINDS})
        if not on:
            out.append(dict(row, note=why["ordinary"], mlp_ms=None))
            continue
        if "composite" not in on:
            row["note"] = f"composite: {why['composite']}"
        g1, g2 = t[f"{name}/gemm1"], t[f"{name}/gemm2"]
        ms = t[f"{name}/{on[0]}"]
        out.append(dict(row, mlp_ms=t[f"{name}/mlp"], mlp_on=on[0], gemm1_ms=g1, gemm2_ms=g2,
                        gemm_tflops=flops / ms / 1e9, gemm_of_peak=flops / ms / 1e9 / peak,
                        gemm1_of_peak=flops * 2 / 3 / g1 / 1e9 / peak, gemm2_of_peak=flops / 3 / g2 / 1e9 / peak))
    return out


def _config(shape: str, dtype: str, peaks: Dict, seed: int):
    """(hidden, experts, top-k, fp8, the dtype's measured peak, a seeded CUDA generator) of one section's run."""
    hidden, _, experts, k = SHAPES[shape]
    fp8 = is_fp8(dtype)
    return (hidden, experts, k, fp8, peaks["fp8_tflops" if fp8 else "bf16_tflops"],
            torch.Generator(device="cuda").manual_seed(seed))


def run(comp: ExpertWeights, plain: ExpertWeights, shape: str, dtype: str, tokens_list: List[int],
        routings: List[str], peaks: Dict, kernels_out: List[Dict]) -> List[Dict]:
    """The selected kernel's rows; every kernel's side-by-side rows (measured in the same turns) are appended to
    kernels_out."""
    hidden, experts, k, fp8, peak, gen = _config(shape, dtype, peaks, seed=1)
    rows = []
    for routed in routings:
        for tokens in tokens_list:
            x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16, generator=gen)
            ids, wts = routing(tokens, experts, k, routed, gen)
            kernel = select(x, comp, ids.numel()).kernel
            flops = mlp_flops(tokens, shape)
            t, ran = measure(x, ids, wts, comp, plain, fp8, dense(tokens, shape, fp8))
            base = {"shape": shape, "dtype": dtype, "routing": routed, "tokens": tokens, "dense_ms": t["dense"],
                    "rows128_over_real": tile_rows_over_real(ids, experts)}
            mine = kernel_rows(t, ran, flops, peak, base)
            kernels_out += mine
            sel = next(r for r in mine if r["kernel"] == kernel.value)
            t_comp, t_plain = sel["composite_ms"], sel["ordinary_ms"]
            row = dict(base, kernel=kernel.value, composite_ms=t_comp, ordinary_ms=t_plain, mlp_ms=sel["mlp_ms"],
                       composite_over_ordinary=t_plain / t_comp if t_plain else None,
                       gemm_tflops=flops / t_comp / 1e9, gemm_of_peak=flops / t_comp / 1e9 / peak,
                       gemm1_of_peak=sel["gemm1_of_peak"], gemm2_of_peak=sel["gemm2_of_peak"],
                       gemm_over_dense=t["dense"] / t_comp)
            cut = next((r for r in mine if r["kernel"] == ExpertKernel.CUTLASS_BF16.value
                        and r.get("mlp_on") == "composite"), None)
            if not fp8 and cut is not None:  # our CUTLASS kernel on the same composite tensors
                row.update(mlp_cutlass_ms=cut["mlp_ms"], mlp_speedup_over_cutlass=cut["mlp_ms"] / sel["mlp_ms"])
            rows.append(row)
            print(f"  gemm {shape} {dtype} {routed} {tokens}: " + ", ".join(
                f"{r['kernel']} {r['composite_ms'] or r['ordinary_ms'] or float('nan'):.2f} ms" for r in mine) +
                f"; dense {t['dense']:.2f}", flush=True)
    return rows


def tile_rows_over_real(ids: torch.Tensor, experts: int, tile: int = 128) -> float:
    """The rows a grouped GEMM of `tile`-row M tiles computes per real row: each expert's last tile is computed
    whole (DeepGEMM's contiguous layout pads it in memory, 128 rows on sm90; tiled kernels compute it alike).
    Balanced random routing at 256 rows per expert computes about a quarter more rows than it needs."""
    n = torch.bincount(ids.reshape(-1), minlength=experts)[:experts]
    return float(((n + tile - 1) // tile * tile).sum()) / max(int(n.sum()), 1)


def experts_used(experts: int, k: int) -> List[int]:
    """How many experts the `rows` section spreads a step's rows over: all, a quarter, a sixteenth (at least k,
    so a token's k experts stay distinct)."""
    return sorted({n for n in (experts, experts // 4, experts // 16) if n >= k}, reverse=True)


def rows_per_expert(comp: ExpertWeights, plain: ExpertWeights, shape: str, dtype: str, tokens_list: List[int],
                    peaks: Dict) -> List[Dict]:
    """The GEMMs of `tokens` tokens with exact routing over fewer and fewer experts: the same FLOPs at more rows
    per expert (256 experts x 512 rows at 16K tokens of DeepSeek-V3; 16 x 8192 is the regime of DeepGEMM's
    published grouped figures). Kernels timed in turns per point."""
    hidden, experts, k, fp8, peak, gen = _config(shape, dtype, peaks, seed=3)
    out = []
    for tokens in tokens_list:
        x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16, generator=gen)
        flops = mlp_flops(tokens, shape)
        for used in experts_used(experts, k):
            ids = (torch.arange(tokens * k, device="cuda") % used).view(tokens, k)
            fns, kind_of = {}, {}
            for kernel in CANDIDATES[fp8]:
                on, _ = _runs_on(kernel, x, comp, plain)
                if on:
                    fns[kernel.value] = both(gemms(x, ids, [comp if on[0] == "composite" else plain], kernel)[0])
                    kind_of[kernel.value] = on[0]
            for name, ms in bench_interleaved(fns).items():
                out.append({"shape": shape, "dtype": dtype, "tokens": tokens, "experts_used": used,
                            "rows_per_expert": tokens * k // used, "kernel": name, "on": kind_of[name],
                            "gemm_ms": ms, "gemm_tflops": flops / ms / 1e9, "gemm_of_peak": flops / ms / 1e9 / peak})
            print(f"  rows {shape} {dtype} {tokens} tokens over {used} experts: " +
                  ", ".join(f"{r['kernel']} {r['gemm_ms']:.2f} ms" for r in out[-len(fns):]), flush=True)
    return out


def sections(hooks, names: List[str], shape: str, dtype: str, tokens: List[int], routings: List[str],
             peaks: Dict) -> Dict[str, List[Dict]]:
    """The `gemm` (with its `kernels` rows) and `rows` sections on the first layer's experts, read through the
    hooks (pull landed) and copied into an ordinary allocation; the step is closed after."""
    out = {"gemm": [], "kernels": [], "rows": []}
    ids = hooks.shape.ids
    hooks.begin_step()
    comp = hooks.layer_weights(ids[0])
    torch.cuda.current_stream().synchronize()  # the pull has landed: time the GEMMs, not the wait
    plain = ordinary_copy(comp)
    if "gemm" in names:
        out["gemm"] = run(comp, plain, shape, dtype, tokens, routings, peaks, out["kernels"])
    if "rows" in names:
        out["rows"] = rows_per_expert(comp, plain, shape, dtype, tokens, peaks)
    hooks.layer_done(ids[0])
    for lid in ids[1:]:
        hooks.layer_weights(lid)
        hooks.layer_done(lid)
    hooks.end_step()
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


def fp8_over_bf16(rows: List[Dict]) -> List[Dict]:
    """FP8 MLP speed over the BF16 MLP at the same shape, routing and tokens (rows of one run)."""
    bf16 = {(r["shape"], r["routing"], r["tokens"]): r["mlp_ms"] for r in rows if r["dtype"] == WeightDtype.BF16}
    return [{"shape": r["shape"], "routing": r["routing"], "tokens": r["tokens"],
             "fp8_mlp_over_bf16": bf16[(r["shape"], r["routing"], r["tokens"])] / r["mlp_ms"]}
            for r in rows if is_fp8(r["dtype"]) and (r["shape"], r["routing"], r["tokens"]) in bf16]
