"""DeepGEMM's FP8 grouped GEMMs at DeepSeek-V3 shapes with M at the static bound vs M cut at the last expert's
padded end (exact rows), for M-block alignments of 128 and 256 rows.

    python benchmarks/deepgemm_rows.py --tokens 8192,16384 --routing balanced,exact
    ncu --metrics dram__bytes_read.sum,lts__t_bytes.sum,gpu__time_duration.sum -k regex:gemm \\
        python benchmarks/deepgemm_rows.py --tokens 8192 --routing balanced --aligns 128 --once

Why: the GEMMs' persistent scheduler streams the A and B tiles of every M block up to M and skips only the math
of blocks marked -1, so the bound's blocks past the real rows cost time. An alignment of 256 keeps DeepGEMM's
2-CTA TMA multicast of a weight tile within one expert, at the price of more pad blocks. One GPU, one process;
device time from CUDA events, the variants of one configuration timed in turns.
"""

from __future__ import annotations

import argparse

import torch


def main() -> int:
    from tensorrt_llm_dwdp.bench.kernels.setup import SHAPES, bench_interleaved, expert_loader, routing
    from tensorrt_llm_dwdp.moe import deepgemm, ops

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="deepseek-v3", choices=sorted(SHAPES))
    p.add_argument("--tokens", default="8192,16384")
    p.add_argument("--routing", default="balanced,exact")
    p.add_argument("--aligns", default="128,256")
    p.add_argument("--once", action="store_true", help="call each GEMM twice, untimed (for a profiler)")
    args = p.parse_args()
    if deepgemm.unavailable() is not None:
        raise SystemExit(f"deepgemm_rows: DeepGEMM cannot run here: {deepgemm.unavailable()}")
    hidden, inter, experts, k = SHAPES[args.shape]
    w = expert_loader(args.shape, "float8_e4m3fn")(0, list(range(experts)))
    gen = torch.Generator(device="cuda").manual_seed(1)
    flops1 = lambda t: 2.0 * t * k * hidden * 2 * inter  # noqa: E731  GEMM1; GEMM2 is half
    for tokens in map(int, args.tokens.split(",")):
        for kind in args.routing.split(","):
            ids, _ = routing(tokens, experts, k, kind, gen)
            x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
            act = torch.randn(tokens * k, inter, device="cuda", dtype=torch.bfloat16)
            fns, rows = {}, {}
            for align in map(int, args.aligns.split(",")):
                for exact in (False, True):
                    lay = deepgemm.build_layout(ids, experts, align, exact=exact)
                    aq, as_ = ops.quantize_fp8(deepgemm.move_rows(x, lay))
                    hq, hs = ops.quantize_fp8(deepgemm.move_rows(act, lay))
                    name = f"align {align} {'exact' if exact else 'bound'}"
                    rows[name] = lay.rows
                    fns[name + " gemm1"] = lambda a=aq, s=as_, m=lay.m_indices: deepgemm.gemm_fp8(
                        a, s, w["w13"], w["w13_scale"], m)
                    fns[name + " gemm2"] = lambda a=hq, s=hs, m=lay.m_indices: deepgemm.gemm_fp8(
                        a, s, w["w2"], w["w2_scale"], m)
            if args.once:
                for fn in fns.values():
                    fn(), fn()
                torch.cuda.synchronize()
                continue
            t = bench_interleaved(fns)
            print(f"{args.shape} {tokens} tokens, {kind} routing ({tokens * k} real rows):")
            for name, ms in t.items():
                fl = flops1(tokens) / (1 if name.endswith("gemm1") else 2)
                print(f"  {name:26s} M {rows[name.rsplit(' ', 1)[0]]:7d}  {ms:8.3f} ms  {fl / ms / 1e9:6.0f} TFLOP/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
