"""`trtllm-dwdp bench kernels`: the GPU data path measured side by side in one run.

  a. expert MLP on split weights (a local quarter + a fetched rest, two grouped-GEMM calls)
     vs the same experts contiguous (one call) vs dense cuBLAS GEMMs of equal FLOPs, with the
     roofline max(FLOPs / peak, bytes / HBM bandwidth) from peaks measured in this run;
  b. the expert MLP alone vs with a concurrent pinned-host -> device pull on a side stream
     through the copy engine, the pull sized to 80% of the MLP's time at the measured rate;
  c. host time to issue one layer's pull: one cudaMemcpyAsync per slice, one
     cudaMemcpyBatchAsync, and a CUDA-graph replay of the per-slice plan.

BF16 only for now. (a) runs the default path (one torch._grouped_mm per segment); (a") the
single-launch CUTLASS kernel where it is built (Hopper). Prints tables, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from ..moe import SplitExpertWeights, WeightSegment, ops
from ..moe.grouped import grouped_moe_experts

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
    return {"bf16_tflops": 2 * n ** 3 / t / 1e9, "hbm_gbps": 2 * src.numel() / tc / 1e6,
            "h2d_gbps": host.numel() / th / 1e6}


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
    t_split = bench_ms(lambda: grouped_moe_experts(x, ids, wts, split))
    nan = float("nan")
    single = ops.single_launch_available(x)
    t_split_one = bench_ms(lambda: grouped_moe_experts(x, ids, wts, split, single_launch=True)) if single else nan
    t_contig_one = bench_ms(lambda: grouped_moe_experts(x, ids, wts, contiguous, single_launch=True)) if single \
        else nan
    t_contig = bench_ms(lambda: grouped_moe_experts(x, ids, wts, contiguous))
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
           "single_over_torch_split": t_split / t_split_one,
           "split_gemm_ms": t_split_gemm, "contiguous_gemm_ms": t_contig_gemm,
           "gemm_split_over_contiguous": t_contig_gemm / t_split_gemm,
           "gemm_split_of_roofline": floor_ms / t_split_gemm}
    return out


def _pull_plan(nbytes: int, slice_bytes: int, source: str = "pinned_host"):
    from .. import _C
    host = (torch.empty(nbytes, dtype=torch.uint8, pin_memory=True) if source == "pinned_host"
            else torch.empty(nbytes, dtype=torch.uint8, device="cuda"))
    slot = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    triples = [(host.data_ptr() + o, o, min(slice_bytes, nbytes - o)) for o in range(0, nbytes, slice_bytes)]
    return host, slot, _C.CopyPlan(triples)


def bench_overlap(name: str, tokens: int, peaks: Dict[str, float], slice_bytes: int = 2 << 20,
                  rounds: int = 5) -> Dict:
    hidden, inter, experts, k = SHAPES[name]
    gen = torch.Generator(device="cuda").manual_seed(tokens + 1)
    w13 = torch.randn(experts, 2 * inter, hidden, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.02
    w2 = torch.randn(experts, hidden, inter, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.02
    weights = SplitExpertWeights(experts, (WeightSegment(tuple(range(experts)), {"w13": w13, "w2": w2}),))
    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16, generator=gen)
    ids, wts = _routing(tokens, experts, k, gen)
    layer = lambda: grouped_moe_experts(x, ids, wts, weights)  # noqa: E731
    alone = bench_ms(layer)
    nbytes = int(0.8 * alone * 1e-3 * peaks["h2d_gbps"] * 1e9) // slice_bytes * slice_bytes or slice_bytes
    host, slot, plan = _pull_plan(nbytes, slice_bytes)
    side = torch.cuda.Stream()
    done = torch.cuda.Event()

    def with_pull():
        side.wait_stream(torch.cuda.current_stream())
        plan.issue(slot.data_ptr(), side.cuda_stream)
        done.record(side)
        layer()
        torch.cuda.current_stream().wait_event(done)

    def pull_only():
        side.wait_stream(torch.cuda.current_stream())
        plan.issue(slot.data_ptr(), side.cuda_stream)
        done.record(side)
        torch.cuda.current_stream().wait_event(done)

    t_pull = bench_ms(pull_only)
    # Alternate the two measurements over several rounds so clock and thermal drift hit both alike.
    alone_runs, both_runs = [], []
    for _ in range(rounds):
        alone_runs.append(bench_ms(layer))
        both_runs.append(bench_ms(with_pull))
    alone, both = sorted(alone_runs)[rounds // 2], sorted(both_runs)[rounds // 2]
    spread = max(alone_runs) / min(alone_runs) - 1.0
    return {"shape": name, "tokens": tokens, "layer_ms": alone, "pull_mib": nbytes / 2**20, "pull_ms": t_pull,
            "layer_with_pull_ms": both, "slowdown": both / alone - 1.0, "alone_spread": spread}


def bench_issue(source: str, nbytes: int = 1 << 30, slice_bytes: int = 2 << 20, reps: int = 50) -> Dict:
    """source: 'pinned_host' (the copy-engine stand-in) or 'device' (same-GPU memory, as an IPC peer)."""
    host, slot, plan = _pull_plan(nbytes, slice_bytes, source)
    side = torch.cuda.Stream()

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
    t_copy = bench_ms(lambda: (plan.issue(slot.data_ptr(), torch.cuda.current_stream().cuda_stream, batched=True)))
    return {"source": source, "pull_mib": nbytes / 2**20, "slices": len(plan), "per_slice_issue_us": each,
            "batched_issue_us": batched, "graph_replay_us": replayed, "copy_ms": t_copy,
            "copy_gbps": nbytes / t_copy / 1e6}


def _table(rows: List[Dict], cols: List[str]) -> str:
    lines = [" ".join(f"{c:>14}" for c in cols)]
    for r in rows:
        lines.append(" ".join(f"{r[c]:>14.3f}" if isinstance(r[c], float) else f"{r[c]:>14}" for c in cols))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="trtllm-dwdp bench kernels", description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="deepseek-v3,qwen3-30b-a3b")
    p.add_argument("--tokens", default="2048,4096,8192,16384", help="tokens per rank")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench kernels needs a CUDA GPU; none is visible")
        return 2
    dev = torch.cuda.get_device_name()
    print(f"device: {dev}, torch {torch.__version__}")
    peaks = measure_peaks()
    print(f"measured peaks: bf16 {peaks['bf16_tflops']:.0f} TFLOP/s, HBM {peaks['hbm_gbps']:.0f} GB/s "
          f"(read+write), pinned host->device {peaks['h2d_gbps']:.1f} GB/s")
    shapes = args.shapes.split(",")
    tokens = [int(t) for t in args.tokens.split(",")]
    gemm, overlap = [], []
    for s in shapes:
        for t in tokens:
            print(f"  [a] {s} {t} tokens ...", flush=True)
            gemm.append(bench_gemm(s, t, peaks))
            torch.cuda.empty_cache()
    print("\n(a) expert MLP, BF16: split (1/4 local + 3/4 fetched, two calls) vs contiguous vs dense")
    print(_table(gemm, ["shape", "tokens", "split_ms", "contiguous_ms", "dense_ms", "split_over_contiguous",
                        "split_of_roofline", "contiguous_of_roofline", "split_over_dense"]))
    print("\n(a\") the same MLP through the single-launch CUTLASS grouped GEMM (Hopper; nan where not built)")
    print(_table(gemm, ["shape", "tokens", "split_single_ms", "contiguous_single_ms", "single_split_over_contiguous",
                        "single_over_torch_split"]))
    print("\n(a') grouped GEMMs alone (SwiGLU included, no permute/combine), on pre-permuted rows")
    print(_table(gemm, ["shape", "tokens", "split_gemm_ms", "contiguous_gemm_ms", "gemm_split_over_contiguous",
                        "gemm_split_of_roofline"]))
    for s in shapes:
        for t in tokens[-2:]:
            print(f"  [b] {s} {t} tokens ...", flush=True)
            overlap.append(bench_overlap(s, t, peaks))
            torch.cuda.empty_cache()
    print("\n(b) expert MLP alone vs with a concurrent pinned-host pull (copy engine, side stream)")
    print(_table(overlap, ["shape", "tokens", "layer_ms", "pull_mib", "pull_ms", "layer_with_pull_ms", "slowdown",
                           "alone_spread"]))
    issue = [bench_issue(src, slice_bytes=sb) for src in ("pinned_host", "device") for sb in (2 << 20, 32 << 20)]
    print("\n(c) host time to issue one layer's pull (1 GiB)")
    print(_table(issue, ["source", "slices", "per_slice_issue_us", "batched_issue_us", "graph_replay_us",
                         "copy_ms", "copy_gbps"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev, "torch": torch.__version__, "peaks": peaks, "gemm": gemm, "overlap": overlap,
                       "issue": issue}, f, indent=1)
    return 0
