"""Summaries of executor runs: TPS/GPU, TTFT percentiles, wait fractions, speedup. Pure functions."""

from __future__ import annotations

from typing import Dict, List

import numpy as np


def summarize(ranks: List[dict]) -> Dict[str, float]:
    """ranks: per-rank dicts with "iterations" and "requests" (as the job writes them); the job
    stores the result beside "ranks" in each mode's entry.

    tokens_per_s_per_gpu: all tokens over the summed busy time of the ranks (first iteration
    start to last iteration end on each rank), i.e. per-GPU throughput while serving.
    wait_fraction: time waiting (fetch stalls or collectives) over busy time.
    """
    tokens = sum(it["tokens"] for r in ranks for it in r["iterations"])
    busy = sum(r["iterations"][-1]["end_s"] - r["iterations"][0]["start_s"] for r in ranks if r["iterations"])
    wait = sum(it["wait_s"] for r in ranks for it in r["iterations"])
    ttft = np.array([q["done_s"] - q["arrival_s"] for r in ranks for q in r["requests"]])
    return {
        "tokens": tokens,
        "tokens_per_s_per_gpu": tokens / busy if busy > 0 else 0.0,
        "ttft_p50_s": float(np.percentile(ttft, 50)) if len(ttft) else 0.0,
        "ttft_p90_s": float(np.percentile(ttft, 90)) if len(ttft) else 0.0,
        "wait_fraction": wait / busy if busy > 0 else 0.0,
        "iterations": sum(len(r["iterations"]) for r in ranks),
        "bytes_pulled": sum(it.get("bytes_pulled", 0) for r in ranks for it in r["iterations"]),
    }


def speedup(modes: Dict[str, dict]) -> float:
    if "dwdp" in modes and "dep" in modes and modes["dep"]["tokens_per_s_per_gpu"] > 0:
        return modes["dwdp"]["tokens_per_s_per_gpu"] / modes["dep"]["tokens_per_s_per_gpu"]
    return float("nan")


def table(results: List[dict]) -> str:
    """One row per (run, mode)."""
    head = f"{'ISL':>18} {'mode':>6} {'TPS/GPU':>10} {'TTFT p50 s':>11} {'TTFT p90 s':>11} {'wait':>7} {'speedup':>8}"
    lines = [head]
    for res in results:
        for mode, s in res["modes"].items():
            sp = f"{res['speedup_dwdp_over_dep']:.3f}" if mode == "dwdp" and res["speedup_dwdp_over_dep"] == \
                res["speedup_dwdp_over_dep"] else ""
            lines.append(f"{res['config']['isl']:>18} {mode:>6} {s['tokens_per_s_per_gpu']:>10.1f} "
                         f"{s['ttft_p50_s']:>11.3f} {s['ttft_p90_s']:>11.3f} {s['wait_fraction']:>7.1%} {sp:>8}")
    return "\n".join(lines)
