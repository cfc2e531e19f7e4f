"""Shapes, timing and the real hooks every section measures on."""

from __future__ import annotations

from typing import Callable, Dict, List

import torch

from ...config import BackendKind, DwdpConfig, is_fp8
from ...hooks import DwdpHooks, MoeShape
from ...moe import ops
from ...workloads.presets import MODEL_PRESETS

# name -> (hidden, expert intermediate, experts, top-k), read from the package's model presets; the presets whose
# expert GEMM dims are whole 128-blocks (FP8 block scales need them; "tiny" is a CPU test model)
SHAPES = {name: (p["hidden"], p["moe_inter"], p["num_experts"], p["top_k"]) for name, p in MODEL_PRESETS.items()
          if p["num_experts"] and not p["hidden"] % 128 and not p["moe_inter"] % 128}


def bench_ms(fn, warmup: int = 3, iters: int = 10) -> float:
    """Median device time of fn() in milliseconds, timed with CUDA events."""
    return bench_interleaved({"": fn}, warmup, iters)[""]


def bench_interleaved(fns: Dict[str, Callable[[], object]], warmup: int = 3, rounds: int = 10) -> Dict[str, float]:
    """Median device time (ms) of each fn, measured in turns (a, b, c, a, b, c, ...): clock and power drift over
    the run lands on every fn alike, so their ratios hold where separate runs differed by up to 15%."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times[name].append(a.elapsed_time(b))
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def measure_peaks() -> Dict[str, float]:
    """Dense BF16 and FP8 (tensor-scaled) GEMM rates and the HBM copy rate of this GPU, measured now."""
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    t = bench_ms(lambda: a @ b)
    src = torch.empty(2 << 30, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    tc = bench_ms(lambda: dst.copy_(src))
    one = torch.ones((), device="cuda")
    a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn).t()  # b column-major, as cuBLAS wants
    t8 = bench_ms(lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16))
    return {"bf16_tflops": 2 * n ** 3 / t / 1e9, "fp8_tflops": 2 * n ** 3 / t8 / 1e9,
            "hbm_gbps": 2 * 2 * 2**30 / tc / 1e6}


def expert_loader(shape: str, dtype: str, seed: int = 0):
    """(layer, experts) -> seeded random experts, the same on every rank; FP8 quantized per 128x128 block."""
    hidden, inter, _, _ = SHAPES[shape]

    fp8 = is_fp8(dtype)

    def one(layer, e, name, shape, std):
        g = torch.Generator(device="cuda").manual_seed(((seed * 1_000_003 + layer) * 4 + len(name)) * 65_537 + int(e))
        w = torch.empty(shape, device="cuda", dtype=torch.bfloat16).normal_(0, std, generator=g)
        return ops.quantize_weight_blocks(w) if fp8 else (w, None)

    def load(layer, experts):
        out = {}
        for name, shape, std in (("w13", (2 * inter, hidden), hidden ** -0.5), ("w2", (hidden, inter), inter ** -0.5)):
            out[name] = torch.empty(len(experts), *shape, device="cuda",
                                    dtype=torch.float8_e4m3fn if fp8 else torch.bfloat16)
            if fp8:
                out[name + "_scale"] = torch.empty(len(experts), shape[0] // 128, shape[1] // 128, device="cuda")
            for i, e in enumerate(experts):  # one expert at a time: bounded temporaries
                w, s = one(layer, e, name, shape, std)
                out[name][i] = w
                if fp8:
                    out[name + "_scale"][i] = s
        return out
    return load


def setup_hooks(shape: str, dtype: str, layers: int, comm, slice_bytes: int = 32 << 20) -> DwdpHooks:
    """A group of comm's ranks on real hooks (CUDA VMM); rank 0 holds a quarter of the experts (as a rank of
    a DWDP4 group does) and pulls the rest from the others, which share them out evenly."""
    hidden, inter, experts, _ = SHAPES[shape]
    g = comm.Get_size()
    mine = experts // 4
    rest = [tuple(range(mine + (experts - mine) * r // (g - 1), mine + (experts - mine) * (r + 1) // (g - 1)))
            for r in range(g - 1)]
    config = DwdpConfig(group_size=g, num_experts=experts, placement=(tuple(range(mine)), *rest),
                        weight_dtype=dtype, memory_backend=BackendKind.CUDA_VMM, slice_bytes=slice_bytes)
    return DwdpHooks.setup(config, MoeShape(layers, hidden, inter, experts), expert_loader(shape, dtype), comm=comm)


def routing(tokens: int, experts: int, k: int, kind: str, gen: torch.Generator):
    """top-k ids [T, k] and weights [T, k]. balanced: uniform random top-k (expert loads vary by chance);
    exact: every expert gets tokens*k/experts rows; skewed: expert popularity log-normal (sigma 1), so the hottest
    experts get several times the mean load, as measured routers without load balancing show."""
    if kind == "exact":
        ids = (torch.arange(tokens * k, device="cuda") % experts).view(tokens, k)
        return ids, torch.rand(tokens, k, device="cuda", generator=gen)
    scores = torch.rand(tokens, experts, device="cuda", generator=gen)
    if kind == "skewed":
        pop = torch.randn(experts, device="cuda", generator=gen).exp()
        scores = scores.log() / pop  # Gumbel-style: higher popularity, more often in the top k
    return scores.topk(k, dim=-1).indices, torch.rand(tokens, k, device="cuda", generator=gen)


def mlp_flops(tokens: int, shape: str) -> float:
    hidden, inter, _, k = SHAPES[shape]
    return 2.0 * tokens * k * 3 * hidden * inter


def fmt_table(rows, cols) -> str:
    width = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, width))]
    lines += ["  ".join(_fmt(r.get(c)).rjust(w) for c, w in zip(cols, width)) for r in rows]
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    return "-" if v is None else str(v)

