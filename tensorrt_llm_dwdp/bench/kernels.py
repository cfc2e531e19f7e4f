"""`trtllm-dwdp bench kernels`: the GPU data path measured side by side in one run.

  a. expert MLP on split weights (a local quarter + a fetched rest, two grouped-GEMM calls)
     vs the same experts contiguous (one call) vs dense cuBLAS GEMMs of equal FLOPs, with the
     roofline max(FLOPs / peak, bytes / HBM bandwidth) from peaks measured in this run;
  b. the expert MLP alone vs with a concurrent pull on a side stream, both started together:
     from pinned host memory through the copy engine (the stand-in for an NVLink pull), for
     the record from same-GPU memory, and, with two or more GPUs, over NVLink while every GPU
     pulls from every other at once (GPU 0 computes; its HBM also serves the peers' pulls, as
     in a DWDP forward); the pull sized to 80% of the MLP's time at that source's rate;
  c. host time to issue one layer's pull: one cudaMemcpyAsync per slice, one
     cudaMemcpyBatchAsync, a torch CUDA-graph replay, and the C++ plan's own graph launch;
  t. each grouped GEMM alone in every tile shape the kernels offer.

  f. FP8 with DeepSeek-V3 block scales: the split-weight MLP through the CUTLASS block-scaled
     kernel vs the same kernel on contiguous weights vs dense FP8 GEMMs, its roofline against
     the FP8 peak measured in this run, and its speed over the best BF16 path.

(a) runs the BF16 library path (one torch._grouped_mm per segment); (a") the single-launch
CUTLASS kernel where it is built (Hopper; the default there), with its tile picked by rows per
expert and the first 128x128 tile for comparison. Prints tables, writes JSON.
"""

from __future__ import annotations

import json
import time
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from ..moe import SplitExpertWeights, WeightSegment, ops
from ..moe.grouped import grouped_moe_experts
from ..usage import Parser, UsageError, check_output_path, one_line_errors

SHAPES = {  # hidden, expert intermediate, experts, top-k
    "deepseek-v3": (7168, 2048, 256, 8),
    "qwen3-30b-a3b": (2048, 768, 128, 8),
}


def bench_ms(fn, warmup: int = 3, iters: int = 10) -> float:
    """Median device time of fn() in milliseconds, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def measure_peaks() -> Dict[str, float]:
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    t = bench_ms(lambda: a @ b)
    src = torch.empty(2 << 30, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    tc = bench_ms(lambda: dst.copy_(src))
    host = torch.empty(1 << 30, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    side = torch.cuda.Stream()

    def h2d():
        with torch.cuda.stream(side):
            dev.copy_(host, non_blocking=True)
        torch.cuda.current_stream().wait_stream(side)

    th = bench_ms(h2d)
    one = torch.ones((), device="cuda")
    a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn).t()  # b column-major, as cuBLAS wants
    t8 = bench_ms(lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16))
    return {"bf16_tflops": 2 * n ** 3 / t / 1e9, "fp8_tflops": 2 * n ** 3 / t8 / 1e9,
            "hbm_gbps": 2 * 2 * 2**30 / tc / 1e6, "h2d_gbps": host.numel() / th / 1e6}


def _routing(tokens: int, experts: int, k: int, gen: torch.Generator):
    scores = torch.rand(tokens, experts, device="cuda", generator=gen)
    ids = scores.topk(k, dim=-1).indices
    return ids, torch.rand(tokens, k, device="cuda", generator=gen)


def bench_gemm(name: str, tokens: int, peaks: Dict[str, float], local_fraction: float = 0.25) -> Dict:
    hidden, inter, experts, k = SHAPES[name]
    gen = torch.Generator(device="cuda").manual_seed(tokens)
    w13 = torch.randn(experts, 2 * inter, hidden, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.02
    w2 = torch.randn(experts, hidden, inter, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.02
    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16, generator=gen)
    ids, wts = _routing(tokens, experts, k, gen)
    n_local = int(experts * local_fraction)
    ids_all = tuple(range(experts))
    # Views of one allocation: the kernels see two independent stacked segments either way.
    contiguous = SplitExpertWeights(experts, (WeightSegment(ids_all, {"w13": w13, "w2": w2}),))
    split = SplitExpertWeights(experts, (
        WeightSegment(ids_all[:n_local], {"w13": w13[:n_local], "w2": w2[:n_local]}),
        WeightSegment(ids_all[n_local:], {"w13": w13[n_local:], "w2": w2[n_local:]})))
    a = tokens * k
    xa = torch.randn(a, hidden, device="cuda", dtype=torch.bfloat16, generator=gen)
    d13 = torch.randn(hidden, 2 * inter, device="cuda", dtype=torch.bfloat16, generator=gen)
    d2 = torch.randn(inter, hidden, device="cuda", dtype=torch.bfloat16, generator=gen)

    def dense():
        h = xa @ d13
        g, u = h.chunk(2, dim=-1)
        return (F.silu(g) * u) @ d2

    def gemms_only(segments, offs_list):
        for seg, offs in zip(segments, offs_list):
            h = torch._grouped_mm(xa, seg.tensors["w13"].transpose(-2, -1), offs=offs)
            g, u = h.chunk(2, dim=-1)
            torch._grouped_mm(F.silu(g) * u, seg.tensors["w2"].transpose(-2, -1), offs=offs)

    counts = torch.bincount(ids.reshape(-1), minlength=experts)
    ends = torch.cumsum(counts, 0).to(torch.int32)
    local_ends = ends[:n_local]
    offs_split = [local_ends, (ends[n_local:] - local_ends[-1]).to(torch.int32)]
    t_split_gemm = bench_ms(lambda: gemms_only(split.segments, offs_split))
    t_contig_gemm = bench_ms(lambda: gemms_only(contiguous.segments, [ends]))
    t_split = bench_ms(lambda: grouped_moe_experts(x, ids, wts, split, single_launch=False))
    nan = float("nan")
    single = ops.single_launch_available(x)
    t_split_one = bench_ms(lambda: grouped_moe_experts(x, ids, wts, split, single_launch=True)) if single else nan
    t_contig_one = bench_ms(lambda: grouped_moe_experts(x, ids, wts, contiguous, single_launch=True)) if single \
        else nan
    t_split_legacy = bench_ms(lambda: grouped_moe_experts(x, ids, wts, split, single_launch=True, tile=3)) \
        if single else nan
    t_single_gemm, tiles = nan, {}
    if single:
        row_ends = torch.cumsum(counts, 0)
        w13s, w2s = [sg.tensors["w13"] for sg in split.segments], [sg.tensors["w2"] for sg in split.segments]

        def single_gemms():
            h = ops.split_grouped_gemm(xa, row_ends, w13s, 2 * inter)
            g, u = h.chunk(2, dim=-1)
            ops.split_grouped_gemm((F.silu(g) * u).contiguous(), row_ends, w2s, hidden)

        t_single_gemm = bench_ms(single_gemms)
        act = torch.randn(a, inter, device="cuda", dtype=torch.bfloat16, generator=gen)
        tiles = _tile_sweep(BF16_TILES, lambda t: ops.split_grouped_gemm(xa, row_ends, w13s, 2 * inter, t),
                            lambda t: ops.split_grouped_gemm(act, row_ends, w2s, hidden, t))
    t_contig = bench_ms(lambda: grouped_moe_experts(x, ids, wts, contiguous, single_launch=False))
    t_dense = bench_ms(dense)
    flops = 6 * a * hidden * inter
    bytes_min = 3 * experts * hidden * inter * 2 + 2 * a * hidden * 2
    floor_ms = max(flops / (peaks["bf16_tflops"] * 1e9), bytes_min / (peaks["hbm_gbps"] * 1e6))
    out = {"shape": name, "tokens": tokens, "dtype": "bf16", "split_ms": t_split, "contiguous_ms": t_contig,
           "dense_ms": t_dense, "split_over_contiguous": t_contig / t_split, "floor_ms": floor_ms,
           "split_of_roofline": floor_ms / t_split, "contiguous_of_roofline": floor_ms / t_contig,
           "split_over_dense": t_dense / t_split, "tflops_split": flops / t_split / 1e9,
           "split_single_ms": t_split_one, "contiguous_single_ms": t_contig_one,
           "single_split_over_contiguous": t_contig_one / t_split_one,
           "single_over_torch_split": t_split / t_split_one, "split_single_legacy_ms": t_split_legacy,
           "tile_gain_over_legacy": t_split_legacy / t_split_one, "single_gemm_ms": t_single_gemm,
           "single_gemm_of_roofline": floor_ms / t_single_gemm,
           "best_split_ms": min(t_split, t_split_one) if single else t_split, "tiles": tiles,
           "split_gemm_ms": t_split_gemm, "contiguous_gemm_ms": t_contig_gemm,
           "gemm_split_over_contiguous": t_contig_gemm / t_split_gemm,
           "gemm_split_of_roofline": floor_ms / t_split_gemm}
    return out


BF16_TILES = {0: "auto", 1: "128x256 c2x1", 2: "64x128 pp", 3: "128x128 c1x1"}
FP8_TILES = {0: "auto", 1: "128x128 c1x2", 2: "64x128 pp"}


def _tile_sweep(tiles: Dict[int, str], gemm13, gemm2) -> Dict[str, Dict[str, float]]:
    """Each GEMM of the MLP alone, on split weights, in every tile shape the kernel offers."""
    return {"w13": {name: bench_ms(lambda: gemm13(t)) for t, name in tiles.items()},
            "w2": {name: bench_ms(lambda: gemm2(t)) for t, name in tiles.items()}}


def _tile_rows(results: List[Dict], dtype: str, tiles: Dict[int, str]) -> str:
    names = list(tiles.values())
    lines = [f"{'shape':>14} {'tokens':>7} {'gemm':>5} " + " ".join(f"{n:>13}" for n in names)]
    for r in results:
        for g in ("w13", "w2"):
            if r.get("tiles"):
                lines.append(f"{r['shape']:>14} {r['tokens']:>7} {g:>5} "
                             + " ".join(f"{r['tiles'][g][n]:>13.3f}" for n in names))
    return f"(t) {dtype} grouped GEMM alone, ms per tile shape (split weights; 'auto' is the default pick)\n" \
        + "\n".join(lines)


def _fp8_experts(experts: int, n: int, k: int, gen: torch.Generator):
    """Random [experts, n, k] weights quantized per 128x128 block, one expert at a time (bounded memory)."""
    q = torch.empty(experts, n, k, device="cuda", dtype=torch.float8_e4m3fn)
    s = torch.empty(experts, n // 128, k // 128, device="cuda", dtype=torch.float32)
    for e in range(experts):
        q[e], s[e] = ops.quantize_weight_blocks(torch.randn(n, k, device="cuda", generator=gen) * 0.02)
    return q, s


def _dense_fp8(xa: torch.Tensor, hidden: int, inter: int, gen: torch.Generator):
    """Dense FP8 MLP of the same FLOPs through torch._scaled_mm (cuBLAS): blockwise 1x128 / 128x128 scales
    where this torch and cuBLAS take them, else one scale per tensor. Returns (fn, scaling name)."""
    a = xa.shape[0]
    w13 = torch.randn(2 * inter, hidden, device="cuda", generator=gen).to(torch.float8_e4m3fn)
    w2 = torch.randn(hidden, inter, device="cuda", generator=gen).to(torch.float8_e4m3fn)
    xq, xs = ops.quantize_fp8(xa)
    act = torch.randn(a, inter, device="cuda", generator=gen).bfloat16()
    aq, as_ = ops.quantize_fp8(act)
    one = torch.ones((), device="cuda")

    def blockwise():
        def mm(q, s, w, ws):  # scale_a outer-dim-major [M, K/128]; scale_b [K/128, N/128] outer-dim-major
            return torch._scaled_mm(q, w.t(), scale_a=s.t().contiguous().t(), scale_b=ws.t(), out_dtype=torch.bfloat16)
        s13 = torch.rand(2 * inter // 128, hidden // 128, device="cuda", generator=gen)
        s2 = torch.rand(hidden // 128, inter // 128, device="cuda", generator=gen)

        def run():
            ops.swiglu_quantize_fp8(mm(xq, xs, w13, s13))
            return mm(aq, as_, w2, s2)
        return run

    def tensorwise():
        mm = lambda q, w: torch._scaled_mm(q, w.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)  # noqa
        return lambda: (ops.swiglu_quantize_fp8(mm(xq, w13)), mm(aq, w2))

    try:
        fn = blockwise()
        fn()
        torch.cuda.synchronize()
        return fn, "blockwise"
    except (RuntimeError, ValueError, NotImplementedError):
        return tensorwise(), "tensorwise"


def bench_fp8(name: str, tokens: int, peaks: Dict[str, float], bf16_ms: float, local_fraction: float = 0.25) -> Dict:
    """The expert MLP on block-scaled FP8 weights: split vs contiguous vs dense, roofline, speed over BF16."""
    hidden, inter, experts, k = SHAPES[name]
    gen = torch.Generator(device="cuda").manual_seed(tokens + 7)
    w13, s13 = _fp8_experts(experts, 2 * inter, hidden, gen)
    w2, s2 = _fp8_experts(experts, hidden, inter, gen)
    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16, generator=gen)
    ids, wts = _routing(tokens, experts, k, gen)
    n_local = int(experts * local_fraction)
    ids_all = tuple(range(experts))

    def seg(lo, hi):
        return WeightSegment(ids_all[lo:hi], {"w13": w13[lo:hi], "w2": w2[lo:hi], "w13_scale": s13[lo:hi],
                                              "w2_scale": s2[lo:hi]})

    contiguous = SplitExpertWeights(experts, (seg(0, experts),))
    split = SplitExpertWeights(experts, (seg(0, n_local), seg(n_local, experts)))
    t_split = bench_ms(lambda: grouped_moe_experts(x, ids, wts, split))
    t_contig = bench_ms(lambda: grouped_moe_experts(x, ids, wts, contiguous))

    a = tokens * k
    xa = torch.randn(a, hidden, device="cuda", dtype=torch.bfloat16, generator=gen)
    xq, xs = ops.quantize_fp8(xa)
    row_ends = torch.cumsum(torch.bincount(ids.reshape(-1), minlength=experts), 0)

    def gemms(weights):
        segs = weights.segments
        h = ops.split_grouped_gemm_fp8(xq, xs, row_ends, [s.tensors["w13"] for s in segs],
                                       [s.tensors["w13_scale"] for s in segs], 2 * inter)
        aq, as_ = ops.swiglu_quantize_fp8(h)
        ops.split_grouped_gemm_fp8(aq, as_, row_ends, [s.tensors["w2"] for s in segs],
                                   [s.tensors["w2_scale"] for s in segs], hidden)

    t_split_gemm = bench_ms(lambda: gemms(split))
    aq, as_ = ops.quantize_fp8(torch.randn(a, inter, device="cuda", generator=gen).bfloat16())
    sg = split.segments
    tiles = _tile_sweep(
        FP8_TILES,
        lambda t: ops.split_grouped_gemm_fp8(xq, xs, row_ends, [s.tensors["w13"] for s in sg],
                                             [s.tensors["w13_scale"] for s in sg], 2 * inter, t),
        lambda t: ops.split_grouped_gemm_fp8(aq, as_, row_ends, [s.tensors["w2"] for s in sg],
                                             [s.tensors["w2_scale"] for s in sg], hidden, t))
    t_contig_gemm = bench_ms(lambda: gemms(contiguous))
    dense, scaling = _dense_fp8(xa, hidden, inter, gen)
    t_dense = bench_ms(dense)
    flops = 6 * a * hidden * inter
    bytes_min = 3 * experts * hidden * inter + 2 * a * hidden * 2
    floor_ms = max(flops / (peaks["fp8_tflops"] * 1e9), bytes_min / (peaks["hbm_gbps"] * 1e6))
    return {"shape": name, "tokens": tokens, "dtype": "fp8", "split_ms": t_split, "contiguous_ms": t_contig,
            "dense_ms": t_dense, "dense_scaling": scaling, "split_over_contiguous": t_contig / t_split,
            "split_gemm_ms": t_split_gemm, "contiguous_gemm_ms": t_contig_gemm,
            "gemm_split_over_contiguous": t_contig_gemm / t_split_gemm, "floor_ms": floor_ms,
            "split_of_roofline": floor_ms / t_split, "gemm_split_of_roofline": floor_ms / t_split_gemm,
            "split_over_dense": t_dense / t_split, "tflops_split": flops / t_split / 1e9,
            "bf16_best_ms": bf16_ms, "fp8_over_bf16": bf16_ms / t_split, "tiles": tiles}


def _round_robin(srcs: List[torch.Tensor], slice_bytes: int, first: int = 0):
    """(src_ptr, dst_offset, bytes) slices of every source, taken round-robin from source `first` on,
    each landing in its own part of one slot: the prefetcher's order."""
    per = []
    for k, src in enumerate(srcs):
        base = k * src.numel()
        per.append([(src.data_ptr() + o, base + o, min(slice_bytes, src.numel() - o))
                    for o in range(0, src.numel(), slice_bytes)])
    order = per[first % len(per):] + per[:first % len(per)]
    return [sl[i] for i in range(max(len(p) for p in per)) for sl in order if i < len(sl)]


class _Pull:
    """One layer's pull: a slot and a C++ copy plan (with its own graph) on one GPU, plus the peer GPUs'
    own pulls for source "nvlink". source: pinned_host, device (same-GPU memory) or nvlink (this GPU
    pulls nbytes round-robin from all others; with peers_pull, every other GPU pulls from all the rest
    too, so this GPU's HBM serves them as in a DWDP forward)."""

    def __init__(self, nbytes: int, slice_bytes: int, source: str, peers_pull: bool = True):
        from .. import _C
        n = torch.cuda.device_count()
        me = torch.cuda.current_device()
        if source == "nvlink" and n < 2:
            raise ValueError("source nvlink needs at least 2 GPUs")
        gpus = [me] + [d for d in range(n) if d != me] if source == "nvlink" else [me]
        part = nbytes // max(1, len(gpus) - 1) // slice_bytes * slice_bytes or slice_bytes
        self.jobs = []  # (device, slot, plan, stream)
        self.keep = []
        shard = {}
        if source == "nvlink":  # what each GPU serves to its peers
            shard = {d: torch.empty(part, dtype=torch.uint8, device=f"cuda:{d}") for d in gpus}
            for d in gpus:  # torch enables peer access on the first peer copy
                for e in gpus:
                    if d != e:
                        shard[d][:16].copy_(shard[e][:16])
        for i, d in enumerate(gpus if peers_pull else gpus[:1]):
            with torch.cuda.device(d):
                if source == "nvlink":
                    srcs = [shard[e] for e in gpus if e != d]
                elif source == "pinned_host":
                    srcs = [torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)]
                else:
                    srcs = [torch.empty(nbytes, dtype=torch.uint8, device=f"cuda:{d}")]
                triples = _round_robin(srcs, slice_bytes, first=i)
                slot = torch.empty(sum(t.numel() for t in srcs), dtype=torch.uint8, device=f"cuda:{d}")
                plan = _C.CopyPlan(triples)
                self.keep += srcs
                self.jobs.append((d, slot, plan, torch.cuda.Stream(device=d)))
        self.keep += list(shard.values())
        self.nbytes = self.jobs[0][1].numel()

    @property
    def slot(self) -> torch.Tensor:
        return self.jobs[0][1]

    @property
    def plan(self):
        return self.jobs[0][2]

    def capture(self) -> None:
        for d, slot, plan, _ in self.jobs:
            with torch.cuda.device(d):
                plan.capture(slot.data_ptr())

    def launch(self, after: torch.cuda.Event) -> torch.cuda.Event:
        """Every GPU's pull, each on its own stream after `after`; the returned event (on this GPU)
        fires when all are done."""
        ends = []
        for d, slot, plan, stream in self.jobs:
            with torch.cuda.device(d):
                stream.wait_event(after)
                plan.launch(slot.data_ptr(), stream.cuda_stream)
                ends.append(stream.record_event())
        me = self.jobs[0][3]
        for e in ends[1:]:
            me.wait_event(e)
        return me.record_event()

    def synchronize(self) -> None:
        for d, _, _, _ in self.jobs:
            torch.cuda.synchronize(d)


def _pull_rate_gbps(source: str, slice_bytes: int) -> float:
    """The rate a pull from `source` runs at, measured here on 1 GiB (nvlink: every GPU pulling)."""
    pull = _Pull(1 << 30, slice_bytes, source)
    pull.capture()
    main = torch.cuda.current_stream()

    def once():
        main.wait_event(pull.launch(main.record_event()))

    return pull.nbytes / bench_ms(once) / 1e6


def bench_overlap(name: str, tokens: int, peaks: Dict[str, float], slice_bytes: int = 2 << 20,
                  rounds: int = 5, source: str = "pinned_host", rate_gbps: Optional[float] = None) -> Dict:
    """source "pinned_host": the copy-engine stand-in for an NVLink pull. "device": a peer shard on the
    same GPU, as IPC ranks sharing one GPU see it; that copy competes for HBM, so it is for the record.
    "nvlink": every GPU pulls from every other at once while this one computes. The pull is 80% of the
    layer's time at the source's rate (rate_gbps; pinned host by default)."""
    hidden, inter, experts, k = SHAPES[name]
    gen = torch.Generator(device="cuda").manual_seed(tokens + 1)
    w13 = torch.randn(experts, 2 * inter, hidden, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.02
    w2 = torch.randn(experts, hidden, inter, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.02
    weights = SplitExpertWeights(experts, (WeightSegment(tuple(range(experts)), {"w13": w13, "w2": w2}),))
    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16, generator=gen)
    ids, wts = _routing(tokens, experts, k, gen)
    layer = lambda: grouped_moe_experts(x, ids, wts, weights)  # noqa: E731
    alone = bench_ms(layer)
    rate = rate_gbps or peaks["h2d_gbps"]
    nbytes = int(0.8 * alone * 1e-3 * rate * 1e9) // slice_bytes * slice_bytes or slice_bytes
    pull = _Pull(nbytes, slice_bytes, source)
    pull.capture()
    main = torch.cuda.current_stream()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def layer_ms(with_pull: bool) -> float:
        """The layer's own time (start to end on the compute stream), with or without a pull that starts
        with it. A spin kernel first keeps the GPU busy while the host queues both, so neither the host
        time of issuing nor the pull's tail after the layer is charged to the layer."""
        torch.cuda._sleep(8_000_000)  # ~4 ms of spinning: longer than queueing the layer and the pull
        start.record(main)
        done = pull.launch(start) if with_pull else None
        layer()
        end.record(main)
        if done is not None:
            main.wait_event(done)
        pull.synchronize()
        return start.elapsed_time(end)

    def pull_only():
        main.wait_event(pull.launch(main.record_event()))

    t_pull = bench_ms(pull_only)
    for _ in range(3):
        layer_ms(False), layer_ms(True)
    # Alternate the two, one run each, so clock and thermal drift hit both alike; medians over all runs.
    alone_runs, both_runs = [], []
    for _ in range(rounds * 10):
        alone_runs.append(layer_ms(False))
        both_runs.append(layer_ms(True))
    alone, both = sorted(alone_runs)[len(alone_runs) // 2], sorted(both_runs)[len(both_runs) // 2]
    spread = sorted(alone_runs)[int(0.9 * len(alone_runs))] / sorted(alone_runs)[len(alone_runs) // 10] - 1.0
    return {"shape": name, "tokens": tokens, "source": source, "slice_mib": slice_bytes / 2**20, "layer_ms": alone,
            "pull_mib": pull.nbytes / 2**20, "pull_ms": t_pull, "layer_with_pull_ms": both,
            "slowdown": both / alone - 1.0, "alone_spread": spread}


def bench_issue(source: str, nbytes: int = 1 << 30, slice_bytes: int = 2 << 20, reps: int = 50) -> Dict:
    """source: 'pinned_host' (the copy-engine stand-in), 'device' (same-GPU memory, as an IPC peer) or
    'nvlink' (this GPU's pull from its peers alone)."""
    pull = _Pull(nbytes, slice_bytes, source, peers_pull=False)  # issue time is one rank's
    slot, plan, side = pull.slot, pull.plan, pull.jobs[0][3]

    def host_us(issue) -> float:
        issue()
        side.synchronize()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            issue()
            times.append(time.perf_counter() - t0)
            side.synchronize()
        times.sort()
        return times[reps // 2] * 1e6

    each = host_us(lambda: plan.issue(slot.data_ptr(), side.cuda_stream, batched=False))
    batched = host_us(lambda: plan.issue(slot.data_ptr(), side.cuda_stream, batched=True))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        plan.issue(slot.data_ptr(), side.cuda_stream, batched=False)
    side.synchronize()

    def replay():
        with torch.cuda.stream(side):
            graph.replay()

    replayed = host_us(replay)
    plan.capture(slot.data_ptr())
    launched = host_us(lambda: plan.launch(slot.data_ptr(), side.cuda_stream))
    t_copy = bench_ms(lambda: (plan.issue(slot.data_ptr(), torch.cuda.current_stream().cuda_stream, batched=True)))
    return {"source": source, "pull_mib": pull.nbytes / 2**20, "slices": len(plan), "per_slice_issue_us": each,
            "batched_issue_us": batched, "graph_replay_us": replayed,
            "graph_launch_us": launched, "copy_ms": t_copy,
            "copy_gbps": pull.nbytes / t_copy / 1e6}


def _table(rows: List[Dict], cols: List[str]) -> str:
    lines = [" ".join(f"{c:>14}" for c in cols)]
    for r in rows:
        lines.append(" ".join(f"{r[c]:>14.3f}" if isinstance(r[c], float) else f"{r[c]:>14}" for c in cols))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    return one_line_errors("trtllm-dwdp bench kernels", _main, argv)


def _numbers(option: str, text: str, kind, example: str) -> list:
    try:
        values = [kind(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise UsageError(f"{option} {text!r}: not a comma list of positive numbers. Fix: e.g. {option} {example}.")
    return values


def _main(argv: Optional[List[str]]) -> int:
    p = Parser(prog="trtllm-dwdp bench kernels", description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="deepseek-v3,qwen3-30b-a3b")
    p.add_argument("--tokens", default="2048,4096,8192,16384", help="tokens per rank")
    p.add_argument("--json", default=None)
    p.add_argument("--no-fp8", action="store_true", help="skip the FP8 block-scaled rows (f)")
    p.add_argument("--sections", default="a,f,b,c", help="comma list of a (with a\", a', t), f, b, c")
    p.add_argument("--sources", default="auto", help="pull sources of (b) and (c): pinned_host, device, nvlink; "
                   "auto = pinned_host,device, plus nvlink with two or more GPUs")
    p.add_argument("--slice-mib", default="2", help="slice sizes of the pulls in (b), MiB, comma list")
    args = p.parse_args(argv)
    sections = set(args.sections.split(","))
    bad = sections - {"a", "f", "b", "c"}
    if bad:
        p.error(f"--sections: unknown {sorted(bad)}; use a comma list of a, f, b, c")
    if "f" in sections and "a" not in sections:
        p.error("--sections: f compares against a's best BF16 time; add a")
    sources = (["pinned_host", "device"] + (["nvlink"] if torch.cuda.device_count() >= 2 else [])
               if args.sources == "auto" else args.sources.split(","))
    bad = set(sources) - {"pinned_host", "device", "nvlink"}
    if bad:
        p.error(f"--sources: unknown {sorted(bad)}; use pinned_host, device, nvlink")
    if "nvlink" in sources and torch.cuda.device_count() < 2:
        p.error(f"--sources nvlink needs at least 2 GPUs; {torch.cuda.device_count()} visible")
    slice_sizes = [int(m * 2**20) for m in _numbers("--slice-mib", args.slice_mib, float, "2,32")]
    tokens = _numbers("--tokens", args.tokens, int, "4096,16384")
    shapes = args.shapes.split(",")
    bad = [s for s in shapes if s not in SHAPES]
    if bad:
        p.error(f"--shapes: unknown {bad}; use a comma list of {', '.join(SHAPES)}")
    check_output_path("--json", args.json)
    if not torch.cuda.is_available():
        raise UsageError("no CUDA GPU is visible and the kernels run on one. Fix: run it on a GPU machine "
                         "(trtllm-dwdp doctor lists the GPUs).")
    dev = torch.cuda.get_device_name()
    print(f"device: {dev} ({torch.cuda.device_count()} visible), torch {torch.__version__}")
    peaks = measure_peaks()
    print(f"measured peaks: bf16 {peaks['bf16_tflops']:.0f} TFLOP/s, fp8 {peaks['fp8_tflops']:.0f} TFLOP/s, "
          f"HBM {peaks['hbm_gbps']:.0f} GB/s "
          f"(read+write), pinned host->device {peaks['h2d_gbps']:.1f} GB/s")
    gemm, overlap, fp8, issue = [], [], [], []
    if "a" in sections:
        for s in shapes:
            for t in tokens:
                print(f"  [a] {s} {t} tokens ...", flush=True)
                gemm.append(bench_gemm(s, t, peaks))
                torch.cuda.empty_cache()
        print("\n(a) expert MLP, BF16, torch._grouped_mm: split (1/4 local + 3/4 fetched, two calls) vs contiguous "
              "vs dense")
        print(_table(gemm, ["shape", "tokens", "split_ms", "contiguous_ms", "dense_ms", "split_over_contiguous",
                            "split_of_roofline", "contiguous_of_roofline", "split_over_dense"]))
        print("\n(a\") the same MLP through the single-launch CUTLASS grouped GEMM (Hopper; nan where not built)")
        print(_table(gemm, ["shape", "tokens", "split_single_ms", "contiguous_single_ms",
                            "single_split_over_contiguous", "single_over_torch_split", "tile_gain_over_legacy",
                            "single_gemm_of_roofline"]))
        print("\n" + _tile_rows(gemm, "BF16", BF16_TILES))
        print("\n(a') grouped GEMMs alone (SwiGLU included, no permute/combine), on pre-permuted rows")
        print(_table(gemm, ["shape", "tokens", "split_gemm_ms", "contiguous_gemm_ms", "gemm_split_over_contiguous",
                            "gemm_split_of_roofline"]))
    if "f" in sections:
        if not args.no_fp8 and ops.fp8_available(torch.zeros(1, device="cuda")):
            for row in gemm:
                print(f"  [f] {row['shape']} {row['tokens']} tokens ...", flush=True)
                fp8.append(bench_fp8(row["shape"], row["tokens"], peaks, row["best_split_ms"]))
                torch.cuda.empty_cache()
            print("\n(f) expert MLP, FP8 block-scaled (CUTLASS, one launch): split vs contiguous vs dense FP8")
            print(_table(fp8, ["shape", "tokens", "split_ms", "contiguous_ms", "dense_ms", "split_over_contiguous",
                               "split_of_roofline", "gemm_split_of_roofline", "split_over_dense", "fp8_over_bf16"]))
            print(f"    dense FP8 scaling: {fp8[0]['dense_scaling'] if fp8 else '-'}; fp8_over_bf16 = best BF16 split "
                  "MLP time / FP8 split MLP time")
            print("\n" + _tile_rows(fp8, "FP8", FP8_TILES))
        else:
            print("\n(f) FP8 skipped: " + ("--no-fp8" if args.no_fp8 else "kernels not built or not a Hopper GPU"))
    if "b" in sections:
        for src in sources:
            for sb in slice_sizes:
                # pinned_host and device pull the same bytes (sized at the pinned-host rate), as before
                rate = _pull_rate_gbps(src, sb) if src == "nvlink" else None
                if rate:
                    print(f"  [b] nvlink, {sb / 2**20:g} MiB slices: {rate:.0f} GB/s per GPU with every GPU "
                          "pulling", flush=True)
                for s in shapes:
                    for t in tokens[-2:]:
                        print(f"  [b] {s} {t} tokens, pull from {src}, {sb / 2**20:g} MiB slices ...", flush=True)
                        overlap.append(bench_overlap(s, t, peaks, slice_bytes=sb, source=src, rate_gbps=rate))
                        torch.cuda.empty_cache()
        print("\n(b) expert MLP alone vs with a concurrent pull on a side stream, both started together; pinned_host "
              "= the copy-engine stand-in for NVLink, device = same-GPU peer memory, which shares HBM "
              "(for the record), nvlink = every GPU pulling from every other while GPU 0 computes; "
              "alone_spread = p90/p10 - 1 of the alone runs")
        print(_table(overlap, ["shape", "tokens", "source", "slice_mib", "layer_ms", "pull_mib", "pull_ms",
                               "layer_with_pull_ms", "slowdown", "alone_spread"]))
    if "c" in sections:
        issue = [bench_issue(src, slice_bytes=sb) for src in sources for sb in (2 << 20, 32 << 20)]
        print("\n(c) host time to issue one layer's pull (1 GiB); graph_launch = the C++ plan's own graph")
        print(_table(issue, ["source", "slices", "per_slice_issue_us", "batched_issue_us", "graph_replay_us",
                             "graph_launch_us", "copy_ms", "copy_gbps"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev, "gpus": torch.cuda.device_count(), "torch": torch.__version__, "peaks": peaks,
                       "gemm": gemm, "overlap": overlap, "issue": issue, "fp8": fp8}, f, indent=1)
    return 0
