"""Summaries of executor runs: TPS/GPU, TTFT percentiles, wait and comm fractions, speedup, caveats.
Pure functions."""

from __future__ import annotations

from typing import Dict, List

import numpy as np

SHARDED_MODES = ("dwdp", "dep")
# A sharded mode does the same work as `local` plus communication; beyond this it is not like for like.
LIKE_FOR_LIKE_MARGIN = 1.10

CPU_CAVEAT = ("CPU ranks: speeds here are not meaningful. The run proves the protocol: gloo over loopback and "
              "shared-memory copies stand in for NVLink, torch's CPU kernels for the GPU's, and ranks share cores, "
              "so one rank's speed depends on what the others are doing at the time.")
SHARED_GPU_CAVEAT = ("several ranks share one GPU: the run proves the GPU path, its speeds are not meaningful "
                     "(DEP stages its collectives through host memory over gloo)")


def summarize(ranks: List[dict]) -> Dict[str, float]:
    """ranks: per-rank dicts with "iterations" and "requests" (as the job writes them); the job
    stores the result beside "ranks" in each mode's entry.

    Only iterations with tokens count: a DEP rank's zero-token forwards (it joins the collectives
    while it has nothing to serve) are charged to no mode, the same rule for every mode.
    busy: per rank, the summed duration of its token-carrying iterations.
    tokens_per_s_per_gpu: all tokens over the summed busy time of the ranks.
    wait_fraction: host time waiting (fetch stalls or inside collectives) over busy time.
    comm_fraction: exposed communication over busy time, device-timed on GPUs (DEP: collectives,
    including waiting for the slowest rank; DWDP: compute stalled on pulls); host timers on CPU ranks.
    """
    work = [it for r in ranks for it in r["iterations"] if it["tokens"] > 0]
    tokens = sum(it["tokens"] for it in work)
    busy = sum(it["end_s"] - it["start_s"] for it in work)
    wait = sum(it["wait_s"] for it in work)
    comm = sum(it.get("comm_s", 0.0) for it in work)
    ttft = np.array([q["done_s"] - q["arrival_s"] for r in ranks for q in r["requests"]])
    return {
        "tokens": tokens,
        "tokens_per_s_per_gpu": tokens / busy if busy > 0 else 0.0,
        "ttft_p50_s": float(np.percentile(ttft, 50)) if len(ttft) else 0.0,
        "ttft_p90_s": float(np.percentile(ttft, 90)) if len(ttft) else 0.0,
        "wait_fraction": wait / busy if busy > 0 else 0.0,
        "comm_fraction": comm / busy if busy > 0 else 0.0,
        "iterations": len(work),
        "idle_iterations": sum(len(r["iterations"]) for r in ranks) - len(work),
        "bytes_pulled": sum(it.get("bytes_pulled", 0) for it in work),
    }


def speedup(modes: Dict[str, dict]) -> float:
    if "dwdp" in modes and "dep" in modes and modes["dep"]["tokens_per_s_per_gpu"] > 0:
        return modes["dwdp"]["tokens_per_s_per_gpu"] / modes["dep"]["tokens_per_s_per_gpu"]
    return float("nan")


def like_for_like_warnings(result: dict) -> List[str]:
    """A sharded mode that beats `local` by more than LIKE_FOR_LIKE_MARGIN: something differs
    besides the sharding (load, warm-up, accounting, the machine), so its ratio to DEP is suspect."""
    modes = result["modes"]
    if "local" not in modes or modes["local"]["tokens_per_s_per_gpu"] <= 0:
        return []
    local = modes["local"]["tokens_per_s_per_gpu"]
    out = []
    for m in SHARDED_MODES:
        if m in modes and modes[m]["tokens_per_s_per_gpu"] > LIKE_FOR_LIKE_MARGIN * local:
            out.append(f"ISL {result['config']['isl']}: {m} serves {modes[m]['tokens_per_s_per_gpu'] / local:.2f}x "
                       f"local's TPS/GPU; a sharded mode does local's work plus communication, so more than "
                       f"{LIKE_FOR_LIKE_MARGIN:.2f}x means the comparison is not like for like")
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


def table(results: List[dict]) -> str:
    """One row per (run, mode), then the caveats. DWDP/DEP: DWDP's TPS/GPU over DEP's, on the dwdp row."""
    head = (f"{'ISL':>18} {'mode':>6} {'TPS/GPU':>10} {'TTFT p50 s':>11} {'TTFT p90 s':>11} {'wait':>7} "
            f"{'comm':>7} {'DWDP/DEP':>9}")
    lines = [head]
    for res in results:
        for mode, s in res["modes"].items():
            sp = f"{res['speedup_dwdp_over_dep']:.3f}" if mode == "dwdp" and res["speedup_dwdp_over_dep"] == \
                res["speedup_dwdp_over_dep"] else ""
            lines.append(f"{res['config']['isl']:>18} {mode:>6} {s['tokens_per_s_per_gpu']:>10.1f} "
                         f"{s['ttft_p50_s']:>11.3f} {s['ttft_p90_s']:>11.3f} {s['wait_fraction']:>7.1%} "
                         f"{s.get('comm_fraction', 0.0):>7.1%} {sp:>9}")
    return "\n".join(lines + caveats(results))
