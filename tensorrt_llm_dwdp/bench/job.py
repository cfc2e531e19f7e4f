"""One benchmark run under mpirun: every mode (local, dwdp, dep) on the same model and requests.

    mpirun -n 4 python -m tensorrt_llm_dwdp.bench.job --preset tiny --isl normal:128:0.2 --json out.json

Requests come from one shared stream, each assigned to the least-loaded rank (attention-DP
balancing, runtime/schedule.py; `--balance per-rank` gives each rank its own stream instead), the
same for every mode. Rank 0 gathers the records and writes JSON with per-mode summaries and
`speedup_dwdp_over_dep`.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from typing import List, Optional

from ..bootstrap import run_or_abort
from ..commands.usage import fail
from ..config import Mode, is_fp8
from ..runtime.model_config import preset
from . import report
from .options import (dwdp_config, model_config, model_name, parse_args, predict_mode, rank_requests, request_seeds,
                      routing_skew, workload_name)

DEP_MODES = (Mode.DEP, Mode.DEP_EPLB)

# NOTE: torch and what needs it are imported by the functions a rank runs (run, run_mode), not here.


def run_mode(mode: str, args, comm, device, dtype) -> dict:
    from ..moe.exchange import CommClock, Traffic
    from ..runtime.apply import apply_dwdp
    from ..runtime.dep import (apply_dep, apply_eplb, dispatch_choice, exchange_backend, init_torch_distributed,
                               rows_choice)
    from ..runtime.executor import ContextExecutor
    from ..runtime.model import Decoder
    if args.checkpoint:
        from ..runtime.checkpoint import load_hf
        model = load_hf(args.checkpoint, device, dtype, args.layers)
        cfg = model.c
    else:
        cfg = preset(args.preset, args.layers, args.vocab)
        # DWDP and DEP make only the experts each rank holds: the full stacks of a large preset need not fit
        model = Decoder.build(cfg, args.seed, device, dtype, lazy_experts=mode in (Mode.DWDP, *DEP_MODES),
                              weight_dtype=args.weight_dtype, routing_skew=routing_skew(args, cfg.num_experts))
    hooks, clock, exchange, traffic, dispatch, rows = None, None, None, None, None, None
    if mode == Mode.DWDP:
        dcfg = dwdp_config(args, cfg, comm.Get_size(), args.weight_dtype if is_fp8(args.weight_dtype)
                           else str(dtype).replace("torch.", ""))
        hooks = apply_dwdp(model, dcfg, comm=comm, device=device)
        if comm.Get_rank() == 0:  # what the composite layout costs, padding included
            print(f"  [dwdp] rank 0 memory: {hooks.plan.memory.describe()}", flush=True)
    elif mode in DEP_MODES:
        clock, traffic = CommClock(device), Traffic()
        stage = init_torch_distributed(comm, device)
        dispatch = dispatch_choice(model, args.dep_dispatch, device)
        rows = rows_choice(model, args.dep_rows, comm.Get_size(), args.max_num_tokens, device)
        if comm.Get_rank() == 0:
            print(f"  [{mode}] dispatch rows {dispatch.dispatch.value}: {dispatch.reason}", flush=True)
            print(f"  [{mode}] expert step on {rows.rows.value} rows: {rows.reason}", flush=True)
        exchange = apply_dep(model, clock, args.max_num_tokens, stage_on_host=stage,
                             backend=exchange_backend(device, stage, args.dep_exchange), keep_experts=mode != Mode.DEP,
                             traffic=traffic, dispatch=dispatch.dispatch, dep_rows=rows.rows)
        if mode == Mode.DEP_EPLB:
            for b in model.moe_blocks():
                b.experts.count_load(cfg.num_experts, device)
    rank, world = comm.Get_rank(), comm.Get_size()
    requests = rank_requests(args, rank, world)
    executor = ContextExecutor(model, Mode.DEP if mode == Mode.DEP_EPLB else mode, args.max_num_tokens, device,
                               args.seed, hooks=hooks, clock=clock, chunked_prefill=args.chunked_prefill,
                               traffic=traffic)
    shown = [0.0]

    def progress(done, total):
        if rank == 0 and (time.time() - shown[0] > 2 or done == total):
            shown[0] = time.time()
            print(f"  [{mode}] rank 0: {done}/{total} requests", flush=True)

    eplb = None
    if mode == Mode.DEP_EPLB:  # one untimed step of plain DEP measures the load the replicas are placed from
        executor.warm_up(requests, 1)
        eplb = apply_eplb(model, clock, args.max_num_tokens, args.eplb, stage_on_host=stage,
                          backend=exchange_backend(device, stage, args.dep_exchange), traffic=traffic,
                          dispatch=dispatch.dispatch, dep_rows=rows.rows)
    _warm_kernels(model, args.max_num_tokens * (world if mode in DEP_MODES else 1), cfg.top_k, dtype,
                  args.max_num_tokens)
    executor.warm_up(requests, args.warmup)  # the same warm-up for every mode, on the placement it times
    comm.Barrier()
    t0 = comm.bcast(time.time() + 0.05, root=0)
    while time.time() < t0:
        time.sleep(1e-3)
    result = executor.run(requests, t0, rank, progress)
    if hooks is not None:
        hooks.close()
    return {"rank": rank, "device": str(device), "exchange": exchange and exchange.value, "eplb": eplb,
            "dispatch": dispatch and {"rows": dispatch.dispatch.value, "reason": dispatch.reason},
            "expert_rows": rows and {"rows": rows.rows.value, "reason": rows.reason},
            "iterations": [vars(i) for i in result.iterations],
            "requests": [dict(vars(q), ttft_s=q.ttft_s) for q in result.requests]}


def _warm_kernels(model, max_rows: int, top_k: int, dtype, max_step: int) -> None:
    """Kernels that compile at first launch (DeepGEMM) compile here, in setup, never in a timed step. max_rows:
    the most rows one expert call sees (DEP: all ranks' tokens); max_step: the most tokens of a rank's own step."""
    blocks = [b for b in model.moe_blocks() if b.experts is not None]
    done = blocks[0].experts.warm_up_kernels(max_rows, top_k, dtype, max_step) if blocks else None
    if done:
        print(f"  {done}", flush=True)


def run_order(args) -> List[str]:
    """The modes in the order they run: --modes, with dep+eplb right after dep (or last) when --eplb is on."""
    order = [m for m in args.modes.split(",") if m]
    if args.eplb:
        order.insert(order.index(Mode.DEP) + 1 if Mode.DEP in order else len(order), Mode.DEP_EPLB.value)
    return order


def run(args) -> int:
    import torch
    from ..runtime.dep import shutdown_torch_distributed
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
    for mode in run_order(args):
        if mode in (Mode.AUTO, Mode.DWDP):
            d = predict_mode(args, model_config(args), comm.Get_size(), mode)
            decisions[mode] = {"mode": d.mode, "reason": d.reason, "speedup": d.speedup,
                               "crossover_tokens": d.crossover_tokens, "warning": d.warning}
            if rank == 0:
                if mode == Mode.AUTO:
                    print(f"mode auto -> {d.mode}: {d.reason}", flush=True)
                if d.warning:
                    print(f"WARNING: {d.warning}", flush=True)
            if mode == Mode.AUTO:
                mode = Mode(d.mode).value
        if mode in done:  # already measured (auto picked a mode that is also listed)
            continue
        done.add(mode)
        if rank == 0:
            print(f"mode {mode}: {comm.Get_size()} ranks, {model_name(args)}, {workload_name(args)}, "
                  f"max_num_tokens {args.max_num_tokens}", flush=True)
        ranks = comm.gather(run_mode(mode, args, comm, device, dtype), root=0)
        # Like for like: the next mode starts as this one did, without its process group's threads or its
        # model's memory still around (a mode that ran after DEP used to share the cores with gloo's group).
        if mode in (Mode.DEP, Mode.DEP_EPLB):
            shutdown_torch_distributed()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the next mode builds its own model: return this one's memory
        if rank == 0:
            # DEP: what its dispatch rows carried, beside the bytes it moved (bytes_moved, bytes_min: the minimum
            # at that row size; an FP8 row is H + 4 H/128 + 8 K bytes where a BF16 one is 2 H + 8 K)
            dispatch = {"dep_dispatch": ranks[0]["dispatch"], "dep_rows": ranks[0]["expert_rows"]} \
                if ranks[0]["dispatch"] else {}
            modes[mode] = dict(report.summarize(ranks), **dispatch, ranks=ranks)
    shutdown_torch_distributed()
    if rank != 0:
        return 0
    shared_gpu = device.type == "cuda" and torch.cuda.device_count() < comm.Get_size()
    out = {"config": dict(vars(args), ranks=comm.Get_size(), device=str(device), dtype=str(dtype),
                          shared_gpu=shared_gpu, routing_skew=routing_skew(args, model_config(args).num_experts)),
           "seeds": {"model": args.seed, "requests": request_seeds(args, comm.Get_size())},
           "modes": modes, "speedup_dwdp_over_dep": report.speedup(modes),
           "speedup_dwdp_over_dep_eplb": report.speedup(modes, Mode.DEP_EPLB.value), "decisions": decisions}
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
    try:  # each rank checks again (the launcher did already): a bad option is one line, not a traceback
        args = parse_args(argv)
    except ValueError as e:
        return fail("python -m tensorrt_llm_dwdp.bench.job", e)
    return run_or_abort(run, args)


if __name__ == "__main__":
    sys.exit(main())
