"""Re-derive published DWDP vs DEP runtime tables from their JSON with the current accounting.

    python benchmarks/rederive_runtime.py benchmarks/results/multi_gpu_2xh200_2026-11-24/bench_*.json

What changes against the numbers printed at the time (bench/report.py):
  * zero-token iterations (DEP ranks idling in lockstep while a peer still serves) are not charged:
    busy time is the summed duration of each rank's token-carrying iterations;
  * each rank's first timed iteration is dropped, in every mode alike: the warm-up of those runs
    never ran the step's all-reduce, so DEP's first iteration held NCCL's first-use initialisation
    (135-152 ms, counted in `wait` from before the iteration started).
What the data cannot give: device-timed communication (the runs timed collectives on the host, and
NCCL is asynchronous), and the cost of the old exchange against the current one: DEP stays the old
per-(token, expert) exchange with a bf16 index_add_ combine and host syncs, so DEP's figures remain
a lower bound on what a tuned DEP serves.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tensorrt_llm_dwdp.bench import report  # noqa: E402


def trimmed(ranks: List[dict], drop_first: int) -> List[dict]:
    """Each rank's token-carrying iterations without its first `drop_first`; requests kept."""
    out = []
    for r in ranks:
        work = [it for it in r["iterations"] if it["tokens"] > 0][drop_first:]
        out.append(dict(r, iterations=work))
    return out


def rederive(run: dict, drop_first: int = 1) -> dict:
    modes = {}
    for m, v in run["modes"].items():
        modes[m] = dict(report.summarize(trimmed(v["ranks"], drop_first)), ranks=v["ranks"])
        modes[m]["idle_iterations"] = sum(it["tokens"] == 0 for r in v["ranks"] for it in r["iterations"])
    return dict(run, modes=modes, speedup_dwdp_over_dep=report.speedup(modes))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("json", nargs="+", help="bench JSON files (one run or a list of runs)")
    p.add_argument("--drop-first", type=int, default=1, help="timed iterations dropped per rank, every mode")
    p.add_argument("--out", default=None, help="write the re-derived summaries here (JSON)")
    args = p.parse_args(argv)
    rows = []
    for path in args.json:
        with open(path) as f:
            data = json.load(f)
        runs = data if isinstance(data, list) else [data]
        print(f"== {os.path.basename(path)}: {runs[0]['config']['preset']}, {runs[0]['config']['layers']} layers, "
              f"max_num_tokens {runs[0]['config']['max_num_tokens']}")
        print(f"{'ISL':>18} {'mode':>6} {'TPS/GPU':>10} {'was':>10} {'wait':>7} {'was':>7} {'idle it':>7} "
              f"{'speedup':>8} {'was':>6}")
        for old in runs:
            new = rederive(old, args.drop_first)
            for m, s in new["modes"].items():
                o = old["modes"][m]
                sp = f"{new['speedup_dwdp_over_dep']:>8.3f} {old['speedup_dwdp_over_dep']:>6.3f}" if m == "dwdp" else ""
                print(f"{old['config']['isl']:>18} {m:>6} {s['tokens_per_s_per_gpu']:>10.1f} "
                      f"{o['tokens_per_s_per_gpu']:>10.1f} {s['wait_fraction']:>7.1%} {o['wait_fraction']:>7.1%} "
                      f"{s['idle_iterations']:>7} {sp}")
                rows.append({"file": os.path.basename(path), "isl": old["config"]["isl"], "mode": m,
                             "max_num_tokens": old["config"]["max_num_tokens"],
                             "tokens_per_s_per_gpu": s["tokens_per_s_per_gpu"],
                             "was_tokens_per_s_per_gpu": o["tokens_per_s_per_gpu"],
                             "wait_fraction": s["wait_fraction"], "was_wait_fraction": o["wait_fraction"],
                             "speedup_dwdp_over_dep": new["speedup_dwdp_over_dep"],
                             "was_speedup_dwdp_over_dep": old["speedup_dwdp_over_dep"]})
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
