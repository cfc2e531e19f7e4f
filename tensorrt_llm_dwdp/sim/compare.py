"""`trtllm-dwdp sim compare`: the simulator's prediction against what `trtllm-dwdp bench --json`
measured, run by run, with the default efficiencies and with a calibration.

    trtllm-dwdp sim compare bench_qwen.json bench_dsv3.json --machine h200 \
        --calibration kernels.json,link_bench.json

Each measured run is simulated on its own settings: the preset (cut to the run's --layers),
the ranks, the ISL distribution, max_num_tokens, and as many iterations per rank as the run
made. The bench runs BF16 weights on GPUs, so the prediction does too. The simulator models
steady state; a short run's last, partly filled iteration is in the measurement only.
"""

from __future__ import annotations

import json
import math
import sys
from typing import List, Optional

from ..commands.usage import Parser, check_output_path, open_output
from ..config import DepDispatch, Mode, WeightDtype
from ..workloads.presets import ALIASES
from ..workloads.requests import parse_isl
from .calibrate import apply_calibration, load_calibration
from .engine import simulate
from .machines import Efficiency, get_machine
from .models import MODELS, get_model, get_precision
from .scenario import DepPacking, Scenario

def _sim_model(preset: str) -> Optional[str]:
    """The simulator's model of a `bench --preset` (the shared table's names and aliases), None for the CPU-sized
    test model."""
    name = ALIASES.get(preset, preset)
    return name if name in MODELS else None


def _precision(c: dict, dep: dict):
    """The run's expert precision (runs from before --weight-dtype: BF16). The simulator's FP8 DEP dispatches
    FP8 rows: an FP8 run whose DEP dispatched BF16 rows (--dep-dispatch bf16) is not what it models."""
    weights = WeightDtype(c.get("weight_dtype", WeightDtype.BF16.value))
    rows = (dep.get("dep_dispatch") or {}).get("rows")
    if weights.is_fp8 and rows == DepDispatch.BF16.value:
        raise ValueError("FP8 experts with DEP dispatching BF16 rows (--dep-dispatch bf16): the simulator's FP8 DEP "
                         "dispatches FP8 rows. Fix: compare runs with --dep-dispatch auto or fp8.")
    return get_precision(weights.sim_precision)


def load_runs(paths: List[str]) -> List[dict]:
    """Every run in the bench JSON files (a file holds one run, or a list from --cv-sweep)."""
    runs = []
    for path in paths:
        try:
            with open(path) as f:
                d = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read a bench JSON ({e}). Fix: pass `trtllm-dwdp bench --json` output.")
        for run in d if isinstance(d, list) else [d]:
            if "config" not in run or "modes" not in run:
                raise ValueError(f"{path}: no 'config'/'modes'. Fix: pass `trtllm-dwdp bench --json` output.")
            runs.append(dict(run, source=path))
    return runs


def _iterations_per_rank(mode: dict, ranks: int) -> int:
    per_rank = [len(r.get("iterations", [])) for r in mode.get("ranks", [])]
    return max(per_rank) if per_rank else max(1, math.ceil(mode["iterations"] / ranks))


def scenario_for(run: dict, machine: str, efficiency: Efficiency, iterations: Optional[int] = None) -> Scenario:
    """The simulator's Scenario for one measured run."""
    c = run["config"]
    if c.get("checkpoint"):
        raise ValueError(f"{run.get('source')}: a checkpoint run; compare knows only presets. Fix: compare preset "
                         "runs.")
    model = _sim_model(c["preset"])
    if model is None:
        raise ValueError(f"{run.get('source')}: preset {c['preset']!r} has no simulator model (the simulator "
                         f"predicts GPU-sized models only). Fix: compare runs of --preset "
                         f"{', '.join([*MODELS, *ALIASES])}.")
    try:
        precision = _precision(c, run["modes"].get(Mode.DEP.value, {}))
    except ValueError as e:
        raise ValueError(f"{run.get('source')}: {e}") from None
    ranks = int(c["ranks"])
    if iterations is None:
        iterations = max(_iterations_per_rank(m, ranks) for m in run["modes"].values())
    if c.get("routing_skew") is not None:  # the run's routers (runs from before --routing-skew: the default)
        efficiency = efficiency.with_(routing_skew=float(c["routing_skew"]))
    # the bench packs every mode alike, chunked only with --chunked-prefill: so does the simulated DEP
    return Scenario(get_machine(machine), get_model(model, c.get("layers")), precision, ranks, parse_isl(c["isl"]),
                    int(c["max_num_tokens"]), iterations=iterations, seed=int(c.get("seed", 0)), efficiency=efficiency,
                    chunked=bool(c.get("chunked_prefill", False)), dep_packing=DepPacking.SAME)


def compare(runs: List[dict], machine: str, calibration: Optional[str] = None):
    """(rows, calibration notes): per run, measured and predicted TPS/GPU of DWDP and DEP and the speedup,
    predicted with the default efficiencies and, given `calibration`, with the measured ones; the link is
    calibrated from the link-bench row of each run's slice size (runs from before --slice-mib used 2 MiB)."""
    rows, notes, cals = [], {}, {}
    for run in runs:
        try:
            _compare_run(run, machine, calibration, rows, notes, cals)
        except (KeyError, TypeError, AttributeError, ZeroDivisionError, OverflowError) as e:
            raise ValueError(f"{run.get('source')}: not a complete `trtllm-dwdp bench --json` run ({type(e).__name__}: "
                             f"{e}). Fix: pass the JSON that bench wrote, unedited.") from None
    return rows, list(notes)


def _compare_run(run: dict, machine: str, calibration: Optional[str], rows: List[dict], notes: dict, cals: dict):
    """One run's row appended to `rows` (notes and calibrations shared across runs)."""
    default = scenario_for(run, machine, Efficiency())
    c, m = run["config"], run["modes"]
    row = {"preset": c["preset"], "layers": c.get("layers"), "ranks": default.ranks, "isl": c["isl"],
           "max_num_tokens": default.max_num_tokens, "iterations": default.iterations}
    for mode in (Mode.DWDP.value, Mode.DEP.value):  # the bench JSON's keys
        row[f"{mode}_measured"] = m[mode]["tokens_per_s_per_gpu"] if mode in m else float("nan")
    row["speedup_measured"] = row["dwdp_measured"] / row["dep_measured"]
    row["dep_wait_measured"] = m["dep"].get("wait_fraction", float("nan")) if "dep" in m else float("nan")
    row["slice_mib"] = float(c.get("slice_mib", 2.0))
    variants = [("default", default)]
    if calibration:
        if row["slice_mib"] not in cals:  # the files are read once per slice size
            cals[row["slice_mib"]] = load_calibration(calibration, row["slice_mib"])
        cal = cals[row["slice_mib"]]
        applied = apply_calibration(default.machine, default.model, Efficiency(), cal)
        notes.update({n: None for n in applied.notes})
        variants.append(("calibrated", scenario_for(run, machine, applied.efficiency, default.iterations)))
    for name, scn in variants:
        res = simulate(scn)
        row[f"dwdp_{name}"] = res.dwdp.tps_per_gpu
        row[f"dep_{name}"] = res.dep.tps_per_gpu
        row[f"speedup_{name}"] = res.speedup
        row[f"dep_wait_{name}"] = res.dep.wait_frac + res.dep.comm_frac
        row[f"dwdp_{name}_over_measured"] = res.dwdp.tps_per_gpu / row["dwdp_measured"]
        row[f"dep_{name}_over_measured"] = res.dep.tps_per_gpu / row["dep_measured"]
    rows.append(row)


def table(rows: List[dict]) -> str:
    """Measured vs predicted, one line per run; `pred/meas` columns are prediction over measurement."""
    variants = [v for v in ("default", "calibrated") if rows and f"speedup_{v}" in rows[0]]
    head = (f"{'preset':>18} {'L':>2} {'MNT':>6} {'ISL':>16} {'MiB':>4} {'it':>3} | {'DWDP':>8} {'DEP':>8} "
            f"{'wait':>5} {'x':>5}")
    for v in variants:
        head += f" | {v + ' DWDP':>16} {'DEP':>8} {'wait':>5} {'x':>5} {'pred/meas':>9}"
    lines = [head]
    for r in rows:
        line = (f"{r['preset']:>18} {r['layers'] or '-':>2} {r['max_num_tokens']:>6} {r['isl']:>16} "
                f"{r['slice_mib']:>4g} {r['iterations']:>3} | "
                f"{r['dwdp_measured']:>8.0f} {r['dep_measured']:>8.0f} {r['dep_wait_measured']:>5.0%} "
                f"{r['speedup_measured']:>5.2f}")
        for v in variants:
            line += (f" | {r[f'dwdp_{v}']:>16.0f} {r[f'dep_{v}']:>8.0f} {r[f'dep_wait_{v}']:>5.0%} "
                     f"{r[f'speedup_{v}']:>5.2f} "
                     f"{r[f'speedup_{v}'] / r['speedup_measured']:>9.2f}")
        lines.append(line)
    return "\n".join(lines)


def build_parser() -> Parser:
    p = Parser(prog="trtllm-dwdp sim compare", description=__doc__.split("\n")[0])
    p.add_argument("bench_json", nargs="+", help="`trtllm-dwdp bench --json` files")
    p.add_argument("--machine", default="h200", help="machine profile of the GPUs the runs used (default h200)")
    p.add_argument("--calibration", default=None, metavar="PATH[,PATH]",
                   help="bench kernels and/or link bench JSON, as for `trtllm-dwdp sim`")
    p.add_argument("--json", default=None, metavar="PATH")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        check_output_path("--json", args.json)
        if args.calibration is not None and not args.calibration.strip():
            raise ValueError(f"--calibration {args.calibration!r}: is empty. Fix: leave --calibration out, or name "
                             "bench kernels' or link_bench's --json output.")
        rows, notes = compare(load_runs(args.bench_json), args.machine, args.calibration)
    except (ValueError, OSError) as e:
        print(f"trtllm-dwdp sim compare: error: {e}", file=sys.stderr)
        return 2
    for n in notes:
        print("calibration: " + n)
    print(table(rows))
    print("TPS/GPU measured, then predicted; wait = DEP's time in collectives and barriers; x = DWDP/DEP; "
          "pred/meas = predicted speedup / measured speedup")
    if args.json:
        with open_output(args.json) as f:
            json.dump({"machine": args.machine, "calibration": args.calibration, "notes": notes, "rows": rows}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
