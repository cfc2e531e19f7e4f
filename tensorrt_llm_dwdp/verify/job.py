"""Multi-rank DWDP correctness and independence check. Run under mpirun, one process per rank:

    mpirun -n 4 python -m tensorrt_llm_dwdp.verify --placement even --steps 4

Every rank holds a shard of a seeded toy MoE stack, runs several steps on its own random
tokens through the DWDP hooks, and compares each output with the float64 all-local
reference. With --stall-rank, that rank sleeps mid-forward; the others must finish all
their steps while it sleeps (no collective in the forward pass). Rank 0 prints a table and
optionally writes JSON; the exit code is non-zero on any failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from ..bootstrap import run_or_abort
from ..commands.usage import Parser, UsageError, check_output_path, fail, open_output, options_named, positive
from ..config import (MEMORY_BACKENDS, PULL_ISSUE_MODES, WEIGHT_DTYPES, BackendKind, DwdpConfig, PullIssue,
                      WeightDtype, parse_placement)
from ..hooks import DwdpHooks
from ..layout import swiglu_expert_specs
from ..memory import check_backend_available
from ..runtime.model_config import Routing
from ..shard import MoeShape
from .model import TOY_ROUTINGS, ToyMoeModel, toy_router

PROG = "python -m tensorrt_llm_dwdp.verify"
# DwdpConfig fields the job sets from its flags
VERIFY_FLAGS = {"group_size": "--group-size", "num_experts": "--num-experts", "experts_per_rank": "--experts-per-rank",
                "placement": "--placement", "prefetch_depth": "--depth", "slice_bytes": "--slice-bytes",
                "weight_dtype": "--dtype", "memory_backend": "--backend", "pull_issue": "--pull-issue"}
TOLERANCE = {"cpu": 2e-5, "cuda": 1e-4}  # ||out - ref|| / ||ref||, float32 math vs float64


def build_parser(prog: str = PROG) -> Parser:
    p = Parser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument("--backend", default=BackendKind.AUTO.value, choices=MEMORY_BACKENDS)
    p.add_argument("--group-size", type=int, default=None, help="DWDP group size (default: world size)")
    p.add_argument("--placement", default="even",
                   help="'even' (uneven when experts do not divide), 'redundant', or explicit '0-3;4-7;...'")
    p.add_argument("--experts-per-rank", type=int, default=None, help="with --placement redundant")
    p.add_argument("--num-experts", type=int, default=16)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--inter", type=int, default=32)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--routing", default=Routing.DEEPSEEK_V3.value, choices=[r.value for r in TOY_ROUTINGS])
    p.add_argument("--n-group", type=int, default=4)
    p.add_argument("--topk-group", type=int, default=2)
    p.add_argument("--depth", type=int, default=2, help="prefetch slots")
    p.add_argument("--pull-issue", default=PullIssue.GRAPH.value, choices=PULL_ISSUE_MODES,
                   help="how GPU ranks issue a layer's pull")
    p.add_argument("--slice-bytes", type=int, default=4096)
    p.add_argument("--dtype", default="float32", choices=WEIGHT_DTYPES,
                   help=f"expert weight dtype; {WeightDtype.FP8} adds 128x128 block scales (--hidden and --inter "
                        "multiples of 128)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--tokens", default="random",
                   help="tokens per rank per step: 'random' (1..--max-tokens) or a comma list indexed by rank")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--zero-rank", type=int, default=None, help="this rank runs every step with zero tokens")
    p.add_argument("--stall-rank", type=int, default=None, help="this rank sleeps mid-forward in step 1")
    p.add_argument("--stall-seconds", type=float, default=3.0)
    p.add_argument("--die-rank", type=int, default=None,
                   help="fault injection: this rank exits abruptly mid-forward in step 1; the job must end, not hang")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance", type=float, default=None,
                   help="relative L2 bound (default: 2e-5 on CPU, 1e-4 on GPU)")
    p.add_argument("--json", default=None, help="rank 0 writes the results here")
    return p


def parse_args(argv: Optional[List[str]] = None, prog: str = PROG) -> argparse.Namespace:
    return build_parser(prog).parse_args(argv)


@dataclass(frozen=True)
class VerifyPlan:
    """What the job's options resolve to on a world of `world_size` ranks."""

    config: DwdpConfig
    shape: MoeShape
    token_counts: Optional[Tuple[int, ...]]  # None: random per step


def plan(args: argparse.Namespace, world_size: int) -> VerifyPlan:
    """Check every option against the library's own rules, touching no memory: the launcher runs
    this before mpirun starts, and every rank again. Raises ValueError naming the option."""
    positive("--steps", args.steps, "run at least one step (with 0 the check compares nothing)")
    positive("--seed", args.seed, "e.g. --seed 0", allow_zero=True)
    for option, value, most in (("--steps", args.steps, 10_000), ("--max-tokens", args.max_tokens, 1 << 16),
                                ("--seed", args.seed, 2**32 - 1)):
        if value > most:
            raise UsageError(f"{option} {value}: at most {most} in this check. Fix: {option} {most} or less.")
    positive("--max-tokens", args.max_tokens, "e.g. --max-tokens 24")
    for option, most in (("--num-experts", 4096), ("--hidden", 1 << 16), ("--inter", 1 << 16), ("--layers", 1024),
                         ("--top-k", 4096), ("--n-group", 4096), ("--topk-group", 4096)):
        value = getattr(args, option[2:].replace("-", "_"))
        positive(option, value, f"e.g. {option} {build_parser().get_default(option[2:].replace('-', '_'))}")
        if value > most:
            raise UsageError(f"{option} {value}: at most {most} in this check. Fix: {option} {most} or less.")
    shape = MoeShape(args.layers, args.hidden, args.inter, args.num_experts)
    swiglu_expert_specs(args.hidden, args.inter, args.dtype)  # FP8 block shapes
    try:
        toy_router(args.routing, args.top_k, args.n_group, args.topk_group).check(args.num_experts)
    except ValueError as e:  # the router's own words name its fields: say which flags set them
        raise UsageError(f"--top-k {args.top_k}, --n-group {args.n_group}, --topk-group {args.topk_group} with "
                         f"--num-experts {args.num_experts}: {e}") from None
    if args.placement == "redundant" and args.experts_per_rank is None:
        raise UsageError("--placement redundant: needs --experts-per-rank. Fix: e.g. --experts-per-rank "
                         f"{-(-args.num_experts // max(1, world_size)) + 1}.")
    if args.experts_per_rank is not None and args.placement != "redundant":
        raise UsageError(f"--experts-per-rank {args.experts_per_rank}: only --placement redundant uses it. "
                         "Fix: add --placement redundant, or drop --experts-per-rank.")
    with options_named(VERIFY_FLAGS):
        check_backend_available(args.backend)
        config = DwdpConfig(
            group_size=world_size if args.group_size is None else args.group_size, num_experts=args.num_experts,
            experts_per_rank=args.experts_per_rank if args.placement == "redundant" else None,
            placement=None if args.placement in ("even", "redundant") else parse_placement(args.placement),
            prefetch_depth=args.depth, slice_bytes=args.slice_bytes, weight_dtype=args.dtype,
            memory_backend=args.backend, pull_issue=args.pull_issue)
        config.resolved_num_groups(world_size)
    for option in ("--zero-rank", "--stall-rank", "--die-rank"):
        rank = getattr(args, option[2:].replace("-", "_"))
        if rank is not None and not 0 <= rank < world_size:
            raise UsageError(f"{option} {rank}: there are ranks 0..{world_size - 1} only. "
                             f"Fix: a rank below {world_size}, or more ranks.")
    for option in ("--stall-rank", "--die-rank"):
        if getattr(args, option[2:].replace("-", "_")) is not None and args.steps < 2:
            raise UsageError(f"{option}: acts in step 1, but --steps is {args.steps}. Fix: --steps 2 or more.")
    if not 0 <= args.stall_seconds <= 3600:
        raise UsageError(f"--stall-seconds {args.stall_seconds:g}: must be 0 to 3600. Fix: e.g. --stall-seconds 3.")
    if args.tolerance is not None and not args.tolerance > 0:
        raise UsageError(f"--tolerance {args.tolerance:g}: must be > 0. Fix: e.g. --tolerance 1e-4.")
    counts = None
    if args.tokens != "random":
        try:
            counts = tuple(int(t) for t in args.tokens.split(","))
        except ValueError:
            counts = ()
        if not counts or min(counts) < 0:
            raise UsageError(f"--tokens {args.tokens!r}: not 'random' or a comma list of token counts >= 0. "
                             "Fix: e.g. --tokens 5,40,0,17.")
    check_output_path("--json", args.json)
    return VerifyPlan(config, shape, counts)


def _tokens(args, rank: int, step: int, gen: torch.Generator) -> int:
    if rank == args.zero_rank:
        return 0
    if args.tokens == "random":
        return int(torch.randint(1, args.max_tokens + 1, (1,), generator=gen))
    counts = [int(t) for t in args.tokens.split(",")]  # checked by plan()
    return counts[rank % len(counts)]


def run(args: argparse.Namespace) -> int:
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    try:
        checked = plan(args, size)
    except ValueError as e:  # the same on every rank: rank 0 says it, all stop
        return fail(PROG, e) if rank == 0 else 2
    config, shape = checked.config, checked.shape
    if args.backend.startswith("cuda") or (args.backend == "auto" and torch.cuda.is_available()):
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    model = ToyMoeModel(args.layers, args.hidden, args.inter, args.num_experts, args.top_k, args.routing,
                        args.n_group, args.topk_group, args.dtype, args.seed)
    tol = args.tolerance if args.tolerance is not None else TOLERANCE[device.type]
    gen = torch.Generator().manual_seed(args.seed * 1000 + rank + 1)
    errors, step_ends, stall = [], [], None

    with DwdpHooks.setup(config, shape, model.load_experts, comm=world, device=device) as hooks:
        t_start = time.time()
        for step in range(args.steps):
            n = _tokens(args, rank, step, gen)
            x = torch.randn(n, args.hidden, generator=gen)

            def after_layer(layer, step=step):
                nonlocal stall
                if rank == args.die_rank and step == 1 and layer == 0:
                    print(f"rank {rank}: exiting abruptly mid-forward (--die-rank)", flush=True)
                    os._exit(3)
                if rank == args.stall_rank and step == 1 and layer == 0:
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    a = time.time()
                    time.sleep(args.stall_seconds)
                    stall = (a, time.time())

            out = model.forward_dwdp(x.to(device), hooks, after_layer).cpu()
            step_ends.append(time.time())
            expect = model.forward_reference(x)
            if not torch.isfinite(out).all():
                err = float("nan")
            elif n == 0:
                err = 0.0 if out.shape == (0, args.hidden) else float("inf")
            else:
                err = float((out.double() - expect).norm() / expect.norm())
            errors.append({"step": step, "tokens": n, "rel_err": err})
        metrics = hooks.metrics()
        info = {
            "rank": rank, "group_rank": hooks.group.rank, "device": str(device), "backend": hooks.backend.kind,
            "local_experts": list(hooks.local_experts), "errors": errors, "t_start": t_start,
            "step_ends": step_ends, "stall": stall,
            "fetch_wait_s": sum(m.fetch_wait_s for m in metrics),
            "bytes_pulled": sum(m.bytes_pulled for m in metrics),
        }
    results = world.gather(info, root=0)
    if rank != 0:
        return 0
    return report(args, results, tol, size)


def report(args, results, tol: float, size: int) -> int:
    ok = True
    print(f"DWDP verify: {size} ranks, placement={args.placement}, experts={args.num_experts}, "
          f"layers={args.layers}, top_k={args.top_k}, routing={args.routing}, dtype={args.dtype}, "
          f"depth={args.depth}, tolerance {tol:g} (relative L2 vs float64 all-local)")
    print(f"{'rank':>4} {'device':>8} {'experts held':>20} {'tokens/step':>18} {'max rel err':>12} "
          f"{'pulled MiB':>10} {'wait ms':>8}")
    for r in results:
        worst = max((e["rel_err"] for e in r["errors"]), default=0.0)
        passed = all(e["rel_err"] <= tol for e in r["errors"])  # NaN fails
        ok &= passed
        held = _ranges(r["local_experts"])
        toks = ",".join(str(e["tokens"]) for e in r["errors"])
        print(f"{r['rank']:>4} {r['device']:>8} {held:>20} {toks:>18} {worst:>12.2e} "
              f"{r['bytes_pulled'] / 2**20:>10.2f} {r['fetch_wait_s'] * 1e3:>8.2f} {'ok' if passed else 'FAIL'}")
    independence = None
    if args.stall_rank is not None:
        stall = results[args.stall_rank]["stall"]
        if stall is None:
            print(f"independence: FAIL (rank {args.stall_rank} never stalled; need --steps >= 2)")
            ok = False
        else:
            a, b = stall
            others = [r for r in results if r["rank"] != args.stall_rank]
            late = [r["rank"] for r in others if r["step_ends"][-1] > b]
            done_during = {r["rank"]: sum(a <= t <= b for t in r["step_ends"]) for r in others}
            independence = {"stall_s": b - a, "steps_done_during_stall": done_during, "finished_after_stall": late}
            if late:
                ok = False
            print(f"independence: rank {args.stall_rank} slept {b - a:.2f}s mid-forward; steps the others "
                  f"completed meanwhile: {done_during}; {'ok' if not late else f'FAIL: ranks {late} were held up'}")
    print("PASS" if ok else "FAIL")
    if args.json:
        with open_output(args.json) as f:
            json.dump({"args": vars(args), "tolerance": tol, "ok": ok, "ranks": results,
                       "independence": independence}, f, indent=1)
    return 0 if ok else 1


def _ranges(ids: List[int]) -> str:
    out, i = [], 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(f"{ids[i]}-{ids[j]}" if j > i else str(ids[i]))
        i = j + 1
    return ",".join(out)


def main(argv: Optional[List[str]] = None) -> int:
    try:  # each rank checks again (the launcher did already): a bad option is one line, not a traceback
        args = parse_args(argv)
    except ValueError as e:
        return fail(PROG, e)
    return run_or_abort(run, args)


if __name__ == "__main__":
    sys.exit(main())
