"""Summaries of executor runs: TPS/GPU, TTFT percentiles, wait and comm fractions, speedup, caveats.
Pure functions."""

from __future__ import annotations

from typing import Dict, List

import numpy as np

from ..config import Mode

SHARDED_MODES = (Mode.DWDP.value, Mode.DEP.value, Mode.DEP_EPLB.value)
# A sharded mode does the same work as `local` plus communication; beyond this it is not like for like.
LIKE_FOR_LIKE_MARGIN = 1.10
# ...and below this fraction of local's TPS/GPU its communication (or a difference in work) dominates the run:
# a ratio to DEP taken there says more about the setup than about DWDP.
LIKE_FOR_LIKE_FLOOR = 0.5

CPU_CAVEAT = ("CPU ranks: speeds here are not meaningful. The run proves the protocol: gloo over loopback and "
              "shared-memory copies stand in for NVLink, torch's CPU kernels for the GPU's, and ranks share cores, "
              "so one rank's speed depends on what the others are doing at the time.")
SHARED_GPU_CAVEAT = ("several ranks share one GPU: the run proves the GPU path, its speeds are not meaningful "
                     "(DEP stages its collectives through host memory over gloo)")


def summarize(ranks: List[dict]) -> Dict[str, float]:
    """ranks: per-rank dicts with "iterations" and "requests" (as the job writes them); the job
    stores the result beside "ranks" in each mode's entry.

    tokens_per_s_per_gpu (the headline): all tokens over W x the wall time of the timed window (the
    first token-carrying iteration's start to the last one's end, over every rank). A rank's idle tail
    counts, as it must: lockstep DEP cannot have one, free-running ranks can.
    busy_tokens_per_s_per_gpu: all tokens over the summed duration of the token-carrying iterations
    (a DEP rank's zero-token forwards, which it runs to join the collectives, are charged to no mode).
    wait_fraction: host time waiting (fetch stalls or inside collectives) over busy time.
    comm_fraction: exposed communication over busy time, device-timed on GPUs (DEP: collectives,
    including waiting for the slowest rank; DWDP: compute stalled on pulls, and the pull still in flight
    at the end-of-step sync); host timers on CPU ranks.
    bytes_pulled_per_step: DWDP's expert bytes pulled per token-carrying iteration (mean over ranks' steps).
    bytes_moved / bytes_min: what the mode sent between ranks over the run, and the least that carries it
    (DEP: one row per (token, destination rank) each way; DWDP: its pulls; local: nothing).
    expert_load_imbalance: the busiest rank's expert rows ((row, expert) pairs its experts computed, over
    every iteration of the run, a DEP rank's zero-token ones included: it computes what others send it)
    over the mean. DEP's group waits for its busiest rank at every layer; local and DWDP ranks compute
    their own tokens, so theirs is the token imbalance the batching left.
    """
    work = [it for r in ranks for it in r["iterations"] if it["tokens"] > 0]
    tokens = sum(it["tokens"] for it in work)
    busy = sum(it["end_s"] - it["start_s"] for it in work)
    window = (max(it["end_s"] for it in work) - min(it["start_s"] for it in work)) if work else 0.0
    wall = len(ranks) * window
    wait = sum(it["wait_s"] for it in work)
    comm = sum(it.get("comm_s", 0.0) for it in work)
    pulled = sum(it.get("bytes_pulled", 0) for it in work)
    ttft = np.array([q["done_s"] - q["arrival_s"] for r in ranks for q in r["requests"]])
    rows = [sum(it.get("expert_rows", 0) for it in r["iterations"]) for r in ranks]
    return {
        "tokens": tokens,
        "tokens_per_s_per_gpu": tokens / wall if wall > 0 else 0.0,
        "busy_tokens_per_s_per_gpu": tokens / busy if busy > 0 else 0.0,
        "window_s": window,
        "ttft_p50_s": float(np.percentile(ttft, 50)) if len(ttft) else 0.0,
        "ttft_p90_s": float(np.percentile(ttft, 90)) if len(ttft) else 0.0,
        "wait_fraction": wait / busy if busy > 0 else 0.0,
        "comm_fraction": comm / busy if busy > 0 else 0.0,
        "iterations": len(work),
        "idle_iterations": sum(len(r["iterations"]) for r in ranks) - len(work),
        "bytes_pulled": pulled,
        "bytes_pulled_per_step": pulled / len(work) if work else 0.0,
        "steps_without_pull": sum(1 for it in work if not it.get("bytes_pulled", 0)),
        # every iteration: a DEP rank's zero-token steps move their fixed-capacity blocks too
        "bytes_moved": sum(it.get("bytes_moved", 0) for r in ranks for it in r["iterations"]),
        "bytes_min": sum(it.get("bytes_min", 0) for r in ranks for it in r["iterations"]),
        "expert_rows": sum(rows),
        "expert_load_imbalance": max(rows) * len(rows) / sum(rows) if sum(rows) else 1.0,
    }


def speedup(modes: Dict[str, dict], baseline: str = "dep") -> float:
    """DWDP's TPS/GPU over `baseline`'s (dep, or dep+eplb), NaN where either did not run."""
    if "dwdp" in modes and baseline in modes and modes[baseline]["tokens_per_s_per_gpu"] > 0:
        return modes["dwdp"]["tokens_per_s_per_gpu"] / modes[baseline]["tokens_per_s_per_gpu"]
    return float("nan")


def like_for_like_warnings(result: dict) -> List[str]:
    """What makes a run's DWDP/DEP ratio suspect:
    * a sharded mode faster than LIKE_FOR_LIKE_MARGIN x local, or slower than LIKE_FOR_LIKE_FLOOR x local:
      something differs besides the sharding (load, warm-up, accounting, the machine);
    * a DWDP run that pulled nothing in its timed window (every remote layer stayed resident): it measured
      local, not DWDP; a DWDP run with some steps that pulled nothing is told too."""
    modes, isl = result["modes"], result["config"]["isl"]
    out = []
    local = modes.get("local", {}).get("tokens_per_s_per_gpu", 0.0)
    for m in SHARDED_MODES if local > 0 else ():
        if m not in modes:
            continue
        ratio = modes[m]["tokens_per_s_per_gpu"] / local
        if ratio > LIKE_FOR_LIKE_MARGIN:
            out.append(f"ISL {isl}: {m} serves {ratio:.2f}x local's TPS/GPU; a sharded mode does local's work plus "
                       f"communication, so more than {LIKE_FOR_LIKE_MARGIN:.2f}x means the comparison is not like "
                       "for like")
        elif ratio < LIKE_FOR_LIKE_FLOOR:
            out.append(f"ISL {isl}: {m} serves {ratio:.2f}x local's TPS/GPU, under {LIKE_FOR_LIKE_FLOOR:.2f}x: its "
                       "communication (or work local does not do) dominates, so its ratio to the other mode says "
                       "more about this setup than about DWDP")
    dwdp = modes.get("dwdp")
    if dwdp is not None and dwdp.get("iterations", 0) > 0:
        if dwdp.get("bytes_pulled", 0) == 0:
            out.append(f"ISL {isl}: dwdp pulled no bytes in the timed window: every remote expert stayed resident "
                       "(MoE layers <= --depth), so the run measured local, not DWDP. Fix: --depth below the number "
                       "of MoE layers")
        elif dwdp.get("steps_without_pull", 0):
            out.append(f"ISL {isl}: dwdp pulled nothing in {dwdp['steps_without_pull']} of {dwdp['iterations']} "
                       "steps (their remote layers stayed resident)")
    return out


def caveats(results: List[dict]) -> List[str]:
    """What a reader must know before reading the numbers: CPU ranks or a shared GPU, and
    like-for-like warnings."""
    out = []
    cfg = results[0]["config"]
    if str(cfg.get("device", "")).startswith("cpu"):
        out.append(CPU_CAVEAT)
    elif cfg.get("shared_gpu"):
        out.append(SHARED_GPU_CAVEAT)
    for res in results:
        out += [f"WARNING: {w}" for w in like_for_like_warnings(res)]
    return out


def _mib(mode: str, s: dict) -> str:
    return f"{s.get('bytes_pulled_per_step', 0.0) / 2**20:.2f}" if mode == Mode.DWDP else ""


def table(results: List[dict]) -> str:
    """One row per (run, mode), then the caveats. TPS/GPU: tokens / (W x wall time of the timed window); busy:
    tokens over summed busy time. imbal: the busiest rank's expert rows over the mean. MiB/step: DWDP's bytes
    pulled per step. DWDP/DEP: DWDP's TPS/GPU over DEP's,
    on the dwdp row."""
    head = (f"{'ISL':>18} {'mode':>8} {'TPS/GPU':>10} {'busy TPS':>10} {'TTFT p50 s':>11} {'TTFT p90 s':>11} "
            f"{'wait':>7} {'comm':>7} {'imbal':>6} {'MiB/step':>9} {'DWDP/DEP':>9}")
    lines = [head]
    for res in results:
        for mode, s in res["modes"].items():
            sp = f"{res['speedup_dwdp_over_dep']:.3f}" if mode == Mode.DWDP and res["speedup_dwdp_over_dep"] == \
                res["speedup_dwdp_over_dep"] else ""
            lines.append(f"{res['config']['isl']:>18} {mode:>8} {s['tokens_per_s_per_gpu']:>10.1f} "
                         f"{s.get('busy_tokens_per_s_per_gpu', 0.0):>10.1f} "
                         f"{s['ttft_p50_s']:>11.3f} {s['ttft_p90_s']:>11.3f} {s['wait_fraction']:>7.1%} "
                         f"{s.get('comm_fraction', 0.0):>7.1%} {s.get('expert_load_imbalance', 1.0):>6.2f} "
                         f"{_mib(mode, s):>9} {sp:>9}")
    return "\n".join(lines + caveats(results))
