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
from ..workload import IslDist, parse_isl
from . import report
from .job import parse_args as job_args


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="trtllm-dwdp bench", description=__doc__.split("\n")[0])
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--cv-sweep", default=None, help="comma list of ISL CVs, e.g. 0,0.2,0.4 (one run each)")
    p.add_argument("--json", default=None, help="write all results here")
    p.add_argument("--plot-dir", default=None, help="write timeline.png (and speedup_vs_cv.png) here")
    p.add_argument("--timeout", type=float, default=None)
    args, rest = p.parse_known_args(argv)
    base = job_args(rest)  # validate before launching anything
    isl = parse_isl(base.isl)
    cvs = [float(c) for c in args.cv_sweep.split(",")] if args.cv_sweep else [isl.cv]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for cv in cvs:
            spec = str(IslDist("normal" if isl.kind == "fixed" and cv > 0 else isl.kind, isl.mean, cv))
            out = os.path.join(tmp, f"cv{cv}.json")
            job = [a for a in rest]
            job += ["--isl", spec, "--json", out]
            print(f"== bench: {args.ranks} ranks, ISL {spec}", flush=True)
            rc = run_ranks(args.ranks, ["-m", "tensorrt_llm_dwdp.runtime.job", *job], timeout_s=args.timeout)
            if rc != 0:
                print(f"bench: the run for ISL {spec} failed (exit {rc})")
                return rc
            with open(out) as f:
                res = json.load(f)
            res["cv"] = cv
            results.append(res)
    print()
    print(report.table(results))  # ends with the caveats: CPU ranks or a shared GPU, like-for-like warnings
    if args.json:
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
