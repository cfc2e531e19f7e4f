"""`trtllm-dwdp sim`: predicted TPS/GPU of DWDP and DEP for a deployment, the speedup and the
crossover; --explain adds the per-layer budget (compute window vs pull) and writes a plot.

Context phase only (prefill tokens per second per GPU). Times are a model, not a measurement:
see tensorrt_llm_dwdp/sim/machines.py for every rate and where it comes from.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from typing import List, Optional

from ..commands.usage import Parser, UsageError, check_output_path, fail, open_output
from ..config import DEFAULT_SLICE_BYTES
from ..workloads.requests import parse_isl
from .analysis import crossover, layer_budget
from .calibrate import apply_calibration, load_calibration
from .dep import A2A_KINDS
from .engine import simulate
from .machines import MACHINES, PRECISIONS, Efficiency, get_machine
from .models import MODELS, get_model, get_precision, model_summary
from .scenario import DEFAULT_EPLB_REDUNDANT, DepModel, DepPacking, PullStreams, Scenario
from ..workloads.popularity import TARGET_IMBALANCE, TARGET_RANKS

MAX_ITERATIONS = 4096
DEFAULT_PLOT = "sim_explain.png"
EXPLAIN_TOKENS = (1024, 2048, 4096, 8192, 16384, 32768, 65536)

# (label, Breakdown field) in the order the table prints them
CATEGORIES = (("attention", "attention"), ("grouped GEMM", "grouped"), ("dense GEMM", "dense"),
              ("other (elementwise)", "other"), ("communication", "comm"), ("synchronisation", "sync"),
              ("pull time (overlapped)", "pull"), ("exposed pull wait", "pull_wait"),
              ("copy slowdown", "slowdown"))


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="trtllm-dwdp sim", description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--machine", default="gb200", help=f"one of {', '.join(MACHINES)} (default gb200)")
    p.add_argument("--model", default="deepseek-r1", help=f"one of {', '.join(MODELS)} (default deepseek-r1)")
    p.add_argument("--layers", type=int, default=None, help="keep this many decoder layers, dense ones first "
                   "(as `trtllm-dwdp bench --layers`)")
    p.add_argument("--precision", default=None, help=f"{', '.join(PRECISIONS)}; default nvfp4 where the GPU has it, "
                                                     f"else fp8")
    p.add_argument("--ranks", type=int, default=4, help="GPUs in the DWDP group and in the DEP group (default 4)")
    p.add_argument("--isl", default="normal:8192:0.2",
                   help="input length: N, or KIND:MEAN:CV with KIND normal|lognormal|uniform (default normal:8192:0.2)")
    p.add_argument("--max-num-tokens", type=int, default=16384, help="token budget per rank per iteration")
    p.add_argument("--max-batch-size", type=int, default=None, help="requests per rank per iteration (default: any)")
    p.add_argument("--chunked", action="store_true", help="fill every iteration to --max-num-tokens (chunked prefill)")
    p.add_argument("--iterations", type=int, default=16, help="iterations simulated per rank (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slots", type=int, default=2, help="DWDP prefetch slots (2 = ping-pong)")
    p.add_argument("--no-slicing", action="store_true", help="pull owner after owner instead of round-robin slices")
    p.add_argument("--slice-mib", type=float, default=DEFAULT_SLICE_BYTES / 2**20, help="slice size of sliced pulls, "
                   "MiB; picks the link bench row that --calibration applies (default: DwdpConfig's)")
    p.add_argument("--experts-per-rank", type=int, default=None, help="more than E/ranks makes a redundant placement")
    p.add_argument("--a2a", default="per-rank", choices=A2A_KINDS, help="DEP all-to-all copies (default per-rank)")
    p.add_argument("--dep-model", default=DepModel.TUNED.value, choices=[d.value for d in DepModel],
                   help="DEP as a tuned engine runs it (per-rank dispatch, fused combine, chunked prefill, dispatch "
                        "hidden behind the shared expert), or this project's first model (legacy)")
    p.add_argument("--dep-packing", default=DepPacking.CHUNKED.value, choices=[x.value for x in DepPacking],
                   help="how the tuned DEP packs iterations: chunked prefill (default) or the same packing as DWDP")
    p.add_argument("--eplb", type=int, nargs="?", const=DEFAULT_EPLB_REDUNDANT, default=0, metavar="N",
                   help="DEP with EPLB, as the runtime's --eplb: N redundant expert slots per rank (alone: "
                        f"{DEFAULT_EPLB_REDUNDANT}) holding replicas of the hot experts; default 0: off")
    p.add_argument("--routing-skew", type=float, default=None,
                   help="Zipf exponent of expert popularity per layer (0 = uniform; default: per model, DEP's busiest "
                        f"rank {TARGET_IMBALANCE}x the mean expert load at {TARGET_RANKS} ranks, workloads/popularity.py)")
    p.add_argument("--jitter", type=float, default=None,
                   help=f"per-rank, per-layer compute time CV (default {Efficiency().jitter})")
    p.add_argument("--pull-streams", default=PullStreams.PER_SOURCE.value, choices=[x.value for x in PullStreams],
                   help="unsliced pulls: one stream owner after owner, or a stream per source (default)")
    p.add_argument("--roofline", action="store_true", help="datasheet peaks, no latency or overlap slowdown")
    p.add_argument("--calibration", default=None, metavar="PATH[,PATH]",
                   help="JSON from `trtllm-dwdp bench kernels --json` and/or `benchmarks/link_bench.py --json`")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    p.add_argument("--explain", action="store_true", help="print the per-layer budget and write a plot")
    p.add_argument("--plot", default=None, metavar="PATH", help=f"PNG written by --explain (default {DEFAULT_PLOT})")
    return p


def scenario_from_args(args: argparse.Namespace):
    """(Scenario, calibration notes); ValueError naming the option on bad input."""
    machine = get_machine(args.machine)
    model = get_model(args.model, args.layers)
    prec = args.precision or ("nvfp4" if machine.supports("nvfp4") else "fp8")
    eff = Efficiency.roofline() if args.roofline else Efficiency()
    notes = ()
    if not 1 / 1024 <= args.slice_mib <= 1024:
        raise ValueError(f"--slice-mib {args.slice_mib:g}: must be 1/1024 to 1024 MiB. Fix: pass the DWDP slice size "
                         "in MiB, e.g. 32.")
    if args.calibration:
        if args.roofline:
            raise ValueError("--calibration with --roofline: the roofline uses datasheet peaks. Fix: drop one.")
        slice_mib = None if args.no_slicing else args.slice_mib
        cal = apply_calibration(machine, model, eff, load_calibration(args.calibration, slice_mib))
        eff, notes = cal.efficiency, cal.notes
    if args.routing_skew is not None:
        eff = eff.with_(routing_skew=args.routing_skew)
    if args.jitter is not None:
        eff = eff.with_(jitter=args.jitter)
    scn = Scenario(machine, model, get_precision(prec), args.ranks, parse_isl(args.isl),
                   args.max_num_tokens, iterations=args.iterations, seed=args.seed, efficiency=eff, slots=args.slots,
                   sliced=not args.no_slicing, experts_per_rank=args.experts_per_rank, chunked=args.chunked,
                   a2a=args.a2a, max_batch_size=args.max_batch_size, dep_model=args.dep_model, eplb=args.eplb,
                   dep_packing=args.dep_packing,
                   streams=args.pull_streams)
    return scn, notes


def _ms(s: float) -> str:
    return f"{s * 1e3:9.3f}"


def run(args: argparse.Namespace, out=None) -> dict:
    """Simulate, print the report to `out` (default stdout) and return it as a dict."""
    out = sys.stdout if out is None else out
    scn, notes = scenario_from_args(args)
    res = simulate(scn)
    cross = crossover(scn)
    mem = scn.memory()
    pr = lambda *a: print(*a, file=out)  # noqa: E731
    pr(scn.describe())
    for line in model_summary(scn.model, scn.precision):
        pr("  " + line)
    for n in notes:
        pr("  calibration: " + n)
    pr(f"{'':28}{'DWDP':>12}{'DEP':>12}")
    pr(f"{'TPS/GPU (context tokens/s)':28}{res.dwdp.tps_per_gpu:12.0f}{res.dep.tps_per_gpu:12.0f}")
    pr(f"{'computing (of rank time)':28}{res.dwdp.busy_frac:12.1%}{res.dep.busy_frac:12.1%}")
    pr(f"{'waiting: pull / barrier':28}{res.dwdp.wait_frac:12.1%}{res.dep.wait_frac:12.1%}")
    pr(f"{'all-to-all':28}{'-':>12}{res.dep.comm_frac:12.1%}")
    pr(f"{'expert load: busiest / mean':28}{'-':>12}{res.dep.expert_imbalance:12.3f}")
    pr(f"per iteration of one rank (ms):{res.dwdp.iteration_s * 1e3:10.2f}{res.dep.iteration_s * 1e3:12.2f}")
    for label, key in CATEGORIES:
        dw, dp = getattr(res.dwdp.breakdown, key), getattr(res.dep.breakdown, key)
        pr(f"{'  ' + label:28}{dw * 1e3:12.2f}{dp * 1e3:12.2f}")
    pr(f"{'weights per GPU (GB)':28}{mem.dwdp_gb:12.1f}{mem.dep_gb:12.1f}   HBM {mem.capacity_gb:.0f} GB")
    pr(f"speedup DWDP/DEP: {res.speedup:.3f}x at {res.mean_tokens_per_iteration:.0f} tokens per rank per iteration")
    pr(f"crossover: {cross.reason}")
    for mode, fits in (("DWDP", mem.dwdp_fits), ("DEP", mem.dep_fits)):
        if not fits:
            pr(f"WARNING: {mode} weights do not fit in {mem.capacity_gb:.0f} GB of HBM per GPU")
    result = {"scenario": {"machine": scn.machine.name, "model": scn.model.name, "precision": scn.precision.name,
                           "ranks": scn.ranks, "isl": str(scn.isl), "max_num_tokens": scn.max_num_tokens,
                           "iterations": scn.iterations, "seed": scn.seed, "slots": scn.slots, "sliced": scn.sliced,
                           "a2a": scn.a2a, "dep_model": scn.dep_model.value, "dep_packing": scn.dep_packing.value,
                           "eplb": scn.eplb,
                           "pull_streams": scn.streams.value, "efficiency": asdict(scn.efficiency)},
              "dwdp": asdict(res.dwdp), "dep": asdict(res.dep), "speedup": res.speedup,
              "mean_tokens_per_iteration": res.mean_tokens_per_iteration, "crossover": asdict(cross),
              "memory": asdict(mem), "calibration_notes": list(notes)}
    result["breakdown_ms"] = {mode: {key: getattr(r.breakdown, key) * 1e3 for _, key in CATEGORIES}
                              for mode, r in (("dwdp", res.dwdp), ("dep", res.dep))}
    if args.explain:
        pr("\nper-category time of one rank per iteration (share of its wall time):")
        for mode, r in (("DWDP", res.dwdp), ("DEP", res.dep)):
            pr(f"  {mode}: " + ", ".join(f"{label} {getattr(r.breakdown, key) / r.iteration_s:.1%}"
                                        for label, key in CATEGORIES if key != "pull"))
        budgets = [layer_budget(scn, t) for t in EXPLAIN_TOKENS]
        here = layer_budget(scn, max(1, int(round(res.mean_tokens_per_iteration))))
        pr(f"\nper-MoE-layer budget (ms), all ranks alike, requests of {int(scn.isl.mean)} tokens:")
        pr(f"{'tokens/rank':>12}{'window':>10}{'pull':>10}{'win/pull':>10}{'DWDP':>10}{'DEP':>10}{'a2a':>10}")
        for b in budgets + [here]:
            mark = "  <- this workload" if b is here else ""
            pr(f"{b.tokens:12d}{_ms(b.compute_s)} {_ms(b.fetch_s)}{b.window_over_fetch:10.2f}{_ms(b.dwdp_s)} "
               f"{_ms(b.dep_s)} {_ms(b.a2a_s)}{mark}")
        pr("window = local (attention, shared expert, router) + all experts the tokens touch; "
           "pull = missing experts' bytes / NVLink")
        result["budget"] = [asdict(b) for b in budgets]
        try:
            from .plot import explain_plot
            plot = args.plot or DEFAULT_PLOT
            os.makedirs(os.path.dirname(os.path.abspath(plot)), exist_ok=True)
            explain_plot(plot, scn, budgets, res, cross)
            pr(f"plot written to {plot}")
            result["plot"] = plot
        except ImportError:
            pr("WARNING: no plot: matplotlib is not installed (pip install matplotlib)")
    if args.json:
        with open_output(args.json) as f:
            json.dump(result, f, indent=1)
    return result


def check_args(args: argparse.Namespace) -> None:
    """What the scenario does not check itself: bounds that keep the model's loops finite, and the outputs."""
    for option, value, low, high in (("--iterations", args.iterations, 1, MAX_ITERATIONS), ("--seed", args.seed, 0, 2**32 - 1),
                                     ("--slots", args.slots, 2, 64)):
        if not low <= value <= high:
            raise UsageError(f"{option} {value}: must be {low} to {high}. Fix: e.g. {option} {low if option != '--iterations' else 16}.")
    for option, value in (("--routing-skew", args.routing_skew), ("--jitter", args.jitter)):
        if value is not None and not 0 <= value <= 10:
            raise UsageError(f"{option} {value:g}: must be 0 to 10. Fix: e.g. {option} 0.2, or leave it out.")
    for option, value in (("--precision", args.precision), ("--calibration", args.calibration)):
        if value is not None and not value.strip():
            raise UsageError(f"{option} {value!r}: is empty. Fix: leave {option} out for the default.")
    check_output_path("--json", args.json)
    if args.plot is not None and not args.explain:
        raise UsageError(f"--plot {args.plot}: only --explain writes a plot. Fix: add --explain, or drop --plot.")
    if args.explain:
        args.plot = args.plot or DEFAULT_PLOT
        check_output_path("--plot", args.plot, suffix=".png")
        if not os.path.splitext(args.plot)[1]:
            raise UsageError(f"--plot {args.plot}: has no file type. Fix: e.g. --plot {args.plot}.png.")


def main(argv: Optional[List[str]] = None) -> int:
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
        check_args(args)
        run(args)
    except (ValueError, OSError) as e:
        return fail("trtllm-dwdp sim", e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
