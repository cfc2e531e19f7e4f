"""`trtllm-dwdp bench`: DWDP vs DEP (and local) on the same model and requests, N ranks via mpirun.

Prints progress and a summary table, writes JSON (--json) and PNG plots (--plot-dir): a per-rank
timeline of the first run and, with --cv-sweep, the speedup against the ISL CV.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from typing import List, Optional

from ..commands.mpirun import check_ranks, mpirun_command, run_ranks
from ..commands.usage import UsageError, check_output_path, one_line_errors, open_output
from ..workloads.requests import IslDist, parse_isl
from . import report
from .capacity import rank_needs_for
from .options import build_parser, model_name, validate, workload_name

PROG = "trtllm-dwdp bench"


def parser() -> argparse.ArgumentParser:
    """The job's parser with bench's own options added to its groups: --help shows every option."""
    p = build_parser(PROG)
    p.description = __doc__.split("\n")[0]
    groups = {g.title: g for g in p._action_groups}
    groups["modes"].add_argument("--ranks", type=int, default=4, help="MPI ranks (default 4)")
    groups["workload"].add_argument("--cv-sweep", default=None,
                                    help="comma list of ISL CVs, e.g. 0,0.2,0.4 (one run each)")
    groups["output"].add_argument("--plot-dir", default=None, help="write timeline.png (and speedup_vs_cv.png) here")
    groups["output"].add_argument("--timeout", type=float, default=None,
                                  help="seconds per run before every rank is stopped")
    groups["output"].add_argument("--dry-run", action="store_true",
                                  help="check every option, print what would run and what each rank needs, and exit")
    return p


def job_argv(args: argparse.Namespace) -> List[str]:
    """The options the job itself takes, as given (bench's own and --json left out)."""
    out = []
    for action in build_parser()._actions:
        if not action.option_strings or action.dest in ("help", "json"):
            continue
        value = getattr(args, action.dest)
        if value is None or value == action.default:
            continue
        # a flag (store_true) is passed as itself, with no value after it
        out += [action.option_strings[0]] if action.nargs == 0 else [action.option_strings[0], str(value)]
    return out


def _cvs(args, isl: IslDist) -> List[float]:
    if args.cv_sweep is None:
        return [isl.cv]
    if args.trace:
        raise UsageError("--cv-sweep with --trace: a trace fixes every ISL. Fix: drop one of them.")
    try:
        cvs = [float(c) for c in args.cv_sweep.split(",")]
    except ValueError:
        raise UsageError(f"--cv-sweep {args.cv_sweep!r}: not a comma list of numbers. Fix: e.g. --cv-sweep 0,0.2,0.4.")
    for cv in cvs:
        try:
            _spec(isl, cv)  # the workload's own check
        except ValueError as e:
            raise UsageError(f"--cv-sweep {args.cv_sweep}: {e}") from None
    return cvs


def _spec(isl: IslDist, cv: float) -> str:
    return str(IslDist("normal" if isl.kind == "fixed" and cv > 0 else isl.kind, isl.mean, cv))


def main(argv: Optional[List[str]] = None) -> int:
    return one_line_errors(PROG, _main, argv)


def _main(argv: Optional[List[str]]) -> int:
    args = parser().parse_args(argv)
    check_ranks(args.ranks)
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError(f"--timeout {args.timeout:g}: must be > 0 seconds. Fix: e.g. --timeout 600, or leave it out.")
    check_output_path("--plot-dir", args.plot_dir, directory=True)
    if args.plot_dir:
        from . import plots
        plots.check_available("--plot-dir")
    isl = parse_isl(args.isl)
    cvs = _cvs(args, isl)
    for cv in cvs:  # everything the ranks would reject, before any of them starts
        args_cv = argparse.Namespace(**dict(vars(args), isl=_spec(isl, cv))) if not args.trace else args
        cfg = validate(args_cv, args.ranks)
    base = job_argv(args)
    if args.dry_run:
        modes = [m for m in args.modes.split(",") if m and m != "auto"] or ["local"]
        needs = rank_needs_for(cfg, args, modes)
        for cv in cvs:
            job = base + ([] if args.trace else ["--isl", _spec(isl, cv)])
            print(" ".join(mpirun_command(args.ranks, ["-m", "tensorrt_llm_dwdp.bench.job", *job])))
        print(f"each rank: ~{needs.total / 2**30:.2f} GiB at its peak ({needs.weight_bytes / 2**30:.2f} weights, "
              f"{needs.activation_bytes / 2**30:.2f} activations); nothing was run")
        return 0
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for cv in cvs:
            spec = _spec(isl, cv)
            out = os.path.join(tmp, f"cv{cv}.json")
            job = list(base)
            if not args.trace:
                job += ["--isl", spec]
            job += ["--json", out]
            work = workload_name(args) if args.trace else f"ISL {spec}"
            print(f"== bench: {args.ranks} ranks, {model_name(args)}, {work}", flush=True)
            rc = run_ranks(args.ranks, ["-m", "tensorrt_llm_dwdp.bench.job", *job], timeout_s=args.timeout,
                           prog=PROG)
            if rc != 0:
                return rc
            with open(out) as f:
                res = json.load(f)
            res["cv"] = cv
            res["config"]["json"] = args.json  # the user's path, not the temporary one the ranks wrote
            results.append(res)
    print()
    label = workload_name(args) if args.trace else None  # the table's ISL column names the trace instead
    # the table ends with the caveats: CPU ranks or a shared GPU, like-for-like warnings
    print(report.table([dict(r, config=dict(r["config"], isl=label)) for r in results] if label else results))
    if args.json:
        with open_output(args.json) as f:
            json.dump(results if len(results) > 1 else results[0], f, indent=1)
    if args.plot_dir:
        from . import plots
        os.makedirs(args.plot_dir, exist_ok=True)
        plots.timeline(results[0], os.path.join(args.plot_dir, "timeline.png"))
        if len(results) > 1:
            plots.speedup_vs_cv(results, os.path.join(args.plot_dir, "speedup_vs_cv.png"))
        print(f"plots written to {args.plot_dir}")
    return 0
