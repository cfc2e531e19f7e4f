"""Where one forward step's GPU time goes: the runtime's model on one GPU, every expert local.

Prints the step time, tokens/s, and the kernels that take the most GPU time in one profiled step.
Usage: python benchmarks/profile_step.py [--preset qwen3-30b-a3b] [--layers 4] [--tokens 16384] [--isl 8192]
"""

from __future__ import annotations

import argparse

import torch


def main(argv=None) -> int:
    from tensorrt_llm_dwdp.runtime.model_config import preset
    from tensorrt_llm_dwdp.runtime.model import Decoder

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="qwen3-30b-a3b")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--tokens", type=int, default=16384, help="tokens in the step")
    p.add_argument("--isl", type=int, default=8192, help="tokens per sequence (the step holds tokens / isl)")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_step needs a CUDA GPU; none is visible")
        return 2
    if args.tokens % args.isl:
        p.error(f"--tokens {args.tokens} is not a multiple of --isl {args.isl}")
    cfg = preset(args.preset, args.layers, args.vocab)
    model = Decoder.build(cfg, 0, torch.device("cuda"), torch.bfloat16)
    seqs = [args.isl] * (args.tokens // args.isl)
    ids = torch.randint(0, cfg.vocab, (args.tokens,), device="cuda")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.no_grad():
        for _ in range(2):
            model(ids, seqs)
        times = []
        for _ in range(5):
            start.record()
            model(ids, seqs)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        ms = sorted(times)[len(times) // 2]
        print(f"{args.preset}, {args.layers} layers, {args.tokens} tokens in {len(seqs)} sequences of {args.isl}: "
              f"{ms:.2f} ms per step, {args.tokens / ms * 1e3:.0f} tokens/s")
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(ids, seqs)
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.top, max_name_column_width=70))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
