"""One benchmark run under mpirun: every mode (local, dwdp, dep) on the same model and requests.

    mpirun -n 4 python -m tensorrt_llm_dwdp.runtime.job --preset tiny --isl normal:128:0.2 --json out.json

Requests come from one shared stream, each assigned to the least-loaded rank (attention-DP
balancing, runtime/schedule.py; `--balance per-rank` gives each rank its own stream instead), the
same for every mode. Rank 0 gathers the records and writes JSON with per-mode summaries and
`speedup_dwdp_over_dep`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from typing import List, Optional

import torch

from ..bootstrap import run_or_abort
from ..config import DEFAULT_SLICE_BYTES, DwdpConfig
from ..workload import load_trace, make_requests, parse_isl
from . import report
from .apply import apply_dwdp
from .config import preset
from ..moe.exchange import CommClock
from .dep import apply_dep, exchange_backend, init_torch_distributed, shutdown_torch_distributed
from .executor import ContextExecutor
from .model import Decoder
from .schedule import least_loaded

MODES = ("local", "dwdp", "dep", "auto")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tensorrt_llm_dwdp.runtime.job", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--checkpoint", default=None, help="Hugging Face checkpoint directory (config.json + "
                   "*.safetensors) of a DeepSeek-V2/V3 or Qwen3-MoE model; overrides --preset")
    p.add_argument("--layers", type=int, default=None, help="keep this many decoder layers of the preset")
    p.add_argument("--vocab", type=int, default=None, help="shrink the vocabulary (embedding and LM head)")
    p.add_argument("--modes", default="dwdp,dep,local")
    p.add_argument("--isl", default="normal:128:0.2", help="8192, or normal|lognormal|uniform:MEAN:CV")
    p.add_argument("--requests", type=int, default=24, help="requests per rank (the shared stream has ranks x this)")
    p.add_argument("--balance", default="least-loaded", choices=("least-loaded", "per-rank"),
                   help="least-loaded: one shared stream, each request to the rank with the fewest tokens "
                        "(attention-DP balancing); per-rank: each rank its own stream")
    p.add_argument("--chunked-prefill", action="store_true",
                   help="split a request longer than the room left in a batch across iterations (every mode)")
    p.add_argument("--dep-exchange", default="auto", choices=("auto", "nccl", "symm_mem"),
                   help="DEP token exchange backend (GPUs, one rank each; auto: nccl). CPU ranks and "
                        "ranks sharing a GPU use gloo")
    p.add_argument("--request-rate", type=float, default=None, help="requests/s per rank (default: closed loop)")
    p.add_argument("--trace", default=None, help="JSONL trace (--balance per-rank: rank r takes lines r, r+N, ...)")
    p.add_argument("--max-num-tokens", type=int, default=512)
    p.add_argument("--group-size", type=int, default=None, help="DWDP group size (default: all ranks)")
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--slice-mib", type=float, default=DEFAULT_SLICE_BYTES / 2**20,
                   help="DWDP pull slice size, MiB (default: DwdpConfig's)")
    p.add_argument("--backend", default="auto", help="DWDP memory backend")
    p.add_argument("--weight-dtype", default="bfloat16", choices=["bfloat16", "float8_e4m3fn"],
                   help="routed experts in every mode: bfloat16, or float8_e4m3fn with DeepSeek-V3 128x128 block scales "
                        "(random presets are quantized per block; needs hidden and moe_inter multiples of 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed forward steps per mode before the run (first-use costs are not the mode's)")
    p.add_argument("--sim-machine", default=None,
                   help="machine profile that mode auto predicts for (default: this GPU's, else h200)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    bad = [m for m in args.modes.split(",") if m not in MODES]
    if bad:
        p.error(f"--modes: unknown {bad}; use a comma list of {', '.join(MODES)}")
    parse_isl(args.isl)
    cfg = preset(args.preset, args.layers)
    if args.weight_dtype == "float8_e4m3fn" and not args.checkpoint and (cfg.hidden % 128 or cfg.moe_inter % 128):
        p.error(f"--weight-dtype float8_e4m3fn: preset {args.preset!r} has hidden {cfg.hidden} and moe_inter "
                f"{cfg.moe_inter}, not both multiples of the 128x128 scale block; use a larger preset or bfloat16")
    return args


def request_seeds(args, world: int) -> List[int]:
    """Seeds of the request streams: one shared stream, or one per rank."""
    return [args.seed * 7919] if args.balance == "least-loaded" else [args.seed * 7919 + r for r in range(world)]


def _requests(args, rank: int, world: int):
    if args.balance == "per-rank":
        if args.trace:
            return [r for i, r in enumerate(load_trace(args.trace)) if i % world == rank]
        return make_requests(parse_isl(args.isl), args.requests, args.seed * 7919 + rank, args.request_rate)
    if args.trace:
        stream = load_trace(args.trace)
    else:
        rate = args.request_rate * world if args.request_rate else None
        stream = make_requests(parse_isl(args.isl), args.requests * world, args.seed * 7919, rate)
    return least_loaded(stream, world)[rank]


def run_mode(mode: str, args, comm, device, dtype) -> dict:
    if args.checkpoint:
        from .checkpoint import load_hf
        model = load_hf(args.checkpoint, device, dtype, args.layers)
        cfg = model.c
    else:
        cfg = preset(args.preset, args.layers, args.vocab)
        # DWDP and DEP make only the experts each rank holds: the full stacks of a large preset need not fit
        model = Decoder.build(cfg, args.seed, device, dtype, lazy_experts=mode in ("dwdp", "dep"),
                              weight_dtype=args.weight_dtype)
    hooks, clock, exchange = None, None, None
    if mode == "dwdp":
        dcfg = DwdpConfig(group_size=args.group_size or comm.Get_size(), num_experts=cfg.num_experts,
                          prefetch_depth=args.depth, slice_bytes=int(args.slice_mib * 2**20),
                          weight_dtype=args.weight_dtype if args.weight_dtype == "float8_e4m3fn"
                          else str(dtype).replace("torch.", ""),
                          memory_backend=args.backend)
        hooks = apply_dwdp(model, dcfg, comm=comm, device=device)
    elif mode == "dep":
        clock = CommClock(device)
        stage = init_torch_distributed(comm, device)
        exchange = apply_dep(model, clock, args.max_num_tokens, stage_on_host=stage,
                             backend=exchange_backend(device, stage, args.dep_exchange))
    rank, world = comm.Get_rank(), comm.Get_size()
    requests = _requests(args, rank, world)
    executor = ContextExecutor(model, mode, args.max_num_tokens, device, args.seed, hooks=hooks, clock=clock,
                               chunked_prefill=args.chunked_prefill)
    shown = [0.0]

    def progress(done, total):
        if rank == 0 and (time.time() - shown[0] > 2 or done == total):
            shown[0] = time.time()
            print(f"  [{mode}] rank 0: {done}/{total} requests", flush=True)

    executor.warm_up(requests, args.warmup)
    comm.Barrier()
    t0 = comm.bcast(time.time() + 0.05, root=0)
    while time.time() < t0:
        time.sleep(1e-3)
    result = executor.run(requests, t0, rank, progress)
    if hooks is not None:
        hooks.close()
    return {"rank": rank, "device": str(device), "exchange": exchange and exchange.value,
            "iterations": [vars(i) for i in result.iterations],
            "requests": [dict(vars(q), ttft_s=q.ttft_s) for q in result.requests]}


def run(args) -> int:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    if torch.cuda.is_available():
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        dtype = torch.bfloat16
    else:
        device, dtype = torch.device("cpu"), torch.float32
    modes, decisions, done = {}, {}, set()  # `done` on every rank: `modes` fills on rank 0 only
    for mode in args.modes.split(","):
        if mode in ("auto", "dwdp"):
            from .auto import choose
            if args.checkpoint:
                from .checkpoint import config_from_hf
                cfg = config_from_hf(args.checkpoint)
            else:
                cfg = preset(args.preset, args.layers, args.vocab)
            d = choose(cfg, comm.Get_size(), args.isl, args.max_num_tokens, requested=mode,
                       machine=args.sim_machine)
            decisions[mode] = {"mode": d.mode, "reason": d.reason, "speedup": d.speedup,
                               "crossover_tokens": d.crossover_tokens, "warning": d.warning}
            if rank == 0:
                if mode == "auto":
                    print(f"mode auto -> {d.mode}: {d.reason}", flush=True)
                if d.warning:
                    print(f"WARNING: {d.warning}", flush=True)
            if mode == "auto":
                mode = d.mode
        if mode in done:  # already measured (auto picked a mode that is also listed)
            continue
        done.add(mode)
        if rank == 0:
            print(f"mode {mode}: {comm.Get_size()} ranks, preset {args.preset}, ISL {args.isl}, "
                  f"max_num_tokens {args.max_num_tokens}", flush=True)
        ranks = comm.gather(run_mode(mode, args, comm, device, dtype), root=0)
        # Like for like: the next mode starts as this one did, without its process group's threads or its
        # model's memory still around (a mode that ran after DEP used to share the cores with gloo's group).
        if mode == "dep":
            shutdown_torch_distributed()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the next mode builds its own model: return this one's memory
        if rank == 0:
            modes[mode] = dict(report.summarize(ranks), ranks=ranks)
    shutdown_torch_distributed()
    if rank != 0:
        return 0
    shared_gpu = device.type == "cuda" and torch.cuda.device_count() < comm.Get_size()
    out = {"config": dict(vars(args), ranks=comm.Get_size(), device=str(device), dtype=str(dtype),
                          shared_gpu=shared_gpu),
           "seeds": {"model": args.seed, "requests": request_seeds(args, comm.Get_size())},
           "modes": modes, "speedup_dwdp_over_dep": report.speedup(modes), "decisions": decisions}
    if shared_gpu:
        out["note"] = report.SHARED_GPU_CAVEAT
    elif device.type == "cpu":
        out["note"] = f"{report.CPU_CAVEAT} ({comm.Get_size()} ranks on {os.cpu_count()} cores)"
    out["warnings"] = report.like_for_like_warnings(out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return run_or_abort(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
