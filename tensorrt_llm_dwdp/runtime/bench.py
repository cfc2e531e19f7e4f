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

from ..launch import run_ranks
from ..usage import UsageError, check_output_path, one_line_errors, positive
from ..workload import IslDist, parse_isl
from . import report
from .job import build_parser, model_name, validate, workload_name

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
    return p


def job_argv(args: argparse.Namespace) -> List[str]:
    """The options the job itself takes, as given (bench's own and --json left out)."""
    out = []
    for action in build_parser()._actions:
        if not action.option_strings or action.dest in ("help", "json"):
            continue
        value = getattr(args, action.dest)
        if value is not None and value != action.default:
            out += [action.option_strings[0], str(value)]
    return out


def _cvs(args, isl: IslDist) -> List[float]:
    if not args.cv_sweep:
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
    positive("--ranks", args.ranks, "e.g. --ranks 4")
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError(f"--timeout {args.timeout:g}: must be > 0 seconds. Fix: e.g. --timeout 600, or leave it out.")
    validate(args, args.ranks)  # everything the ranks would reject, before any of them starts
    check_output_path("--plot-dir", args.plot_dir, directory=True)
    isl = parse_isl(args.isl)
    cvs = _cvs(args, isl)
    base = job_argv(args)
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
            rc = run_ranks(args.ranks, ["-m", "tensorrt_llm_dwdp.runtime.job", *job], timeout_s=args.timeout,
                           prog=PROG)
            if rc != 0:
                return rc
            with open(out) as f:
                res = json.load(f)
            res["cv"] = cv
            results.append(res)
    print()
    label = workload_name(args) if args.trace else None  # the table's ISL column names the trace instead
    # the table ends with the caveats: CPU ranks or a shared GPU, like-for-like warnings
    print(report.table([dict(r, config=dict(r["config"], isl=label)) for r in results] if label else results))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results if len(results) > 1 else results[0], f, indent=1)
    if args.plot_dir:
        from . import plots
        os.makedirs(args.plot_dir, exist_ok=True)
        plots.timeline(results[0], os.path.join(args.plot_dir, "timeline.png"))
        if len(results) > 1:
            plots.speedup_vs_cv(results, os.path.join(args.plot_dir, "speedup_vs_cv.png"))
        print(f"plots written to {args.plot_dir}")
    return 0
