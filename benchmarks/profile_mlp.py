"""Where one expert MLP's GPU time goes, per kernel, for each FP8 (or BF16) expert kernel side by side.

    python benchmarks/profile_mlp.py --tokens 8192 --kernels deepgemm_fp8,cutlass_fp8

DeepSeek-V3-shaped random experts (all local), balanced random routing; three calls per kernel after three
warm-up calls, under torch.profiler. The sum of kernel times is the MLP's device time; `bench kernels`' mlp_ms
is the time between events around one call from an idle GPU, which also holds the gaps where the GPU waits for
the host to launch the next kernel.
"""

from __future__ import annotations

import argparse

import torch


def main(argv=None) -> int:
    from torch.profiler import ProfilerActivity, profile

    from tensorrt_llm_dwdp.bench.kernels.setup import SHAPES, expert_loader, routing
    from tensorrt_llm_dwdp.moe import ExpertKernel, ExpertWeights, expert_compute

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="deepseek-v3", choices=sorted(SHAPES))
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--dtype", default="float8_e4m3fn", choices=("float8_e4m3fn", "bfloat16"))
    p.add_argument("--kernels", default="deepgemm_fp8,cutlass_fp8",
                   help=f"comma list of {', '.join(k.value for k in ExpertKernel)}")
    p.add_argument("--top", type=int, default=14)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_mlp needs a CUDA GPU; none is visible")
        return 2
    kernels = [ExpertKernel(k) for k in args.kernels.split(",")]
    hidden, _, experts, k = SHAPES[args.shape]
    w = expert_loader(args.shape, args.dtype)(0, list(range(experts)))
    weights = ExpertWeights(w["w13"], w["w2"], w.get("w13_scale"), w.get("w2_scale"))
    ids, wts = routing(args.tokens, experts, k, "balanced", torch.Generator(device="cuda").manual_seed(1))
    x = torch.randn(args.tokens, hidden, device="cuda", dtype=torch.bfloat16)
    for kernel in kernels:
        for _ in range(3):
            expert_compute(x, ids, wts, weights, kernel=kernel)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                expert_compute(x, ids, wts, weights, kernel=kernel)
            torch.cuda.synchronize()
        print(f"{kernel.value}, {args.tokens} tokens, 3 calls:")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.top, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
