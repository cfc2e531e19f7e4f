"""PNG plots of benchmark results (matplotlib, Agg; imported only when plotting). Every plot shows
every mode that ran, a legend, and the run's caveats (report.caveats) under the axes."""

from __future__ import annotations

import textwrap
from typing import List

from . import report

COLORS = {"dwdp": "tab:blue", "dep": "tab:orange", "dep+eplb": "tab:red", "local": "tab:green"}


def check_available(option: str) -> None:
    """Before a run, not after it: the plots need matplotlib."""
    import importlib.util
    if importlib.util.find_spec("matplotlib") is None:
        raise ValueError(f"{option}: plots need matplotlib, which is not installed. Fix: pip install matplotlib, "
                         f"or leave {option} out.")


def _caveat(fig, results: List[dict]) -> None:
    lines = report.caveats(results)
    if lines:
        fig.text(0.01, 0.01, "\n".join(textwrap.fill(c, 150) for c in lines), fontsize=7, va="bottom",
                 color="firebrick")


def _margin(results: List[dict]) -> float:
    text = "\n".join(textwrap.fill(c, 150) for c in report.caveats(results))
    return 0.4 + 0.13 * (text.count("\n") + 1) if text else 0.0


def timeline(result: dict, path: str) -> None:
    """Per-rank iterations of one run, one row per (mode, rank): compute in colour, waiting hatched,
    zero-token forwards (DEP ranks with nothing to serve) grey."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = [(mode, r) for mode, m in result["modes"].items() for r in m["ranks"]]
    margin = _margin([result])
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.8 + margin))
    drawn = set()  # the legend lists what the plot shows, nothing else
    for y, (mode, r) in enumerate(rows):
        color = COLORS.get(mode, "tab:purple")
        for it in r["iterations"]:
            dur = it["end_s"] - it["start_s"]
            if it["tokens"] == 0:
                ax.broken_barh([(it["start_s"], dur)], (y - 0.35, 0.7), color="lightgrey")
                drawn.add("idle")
                continue
            wait = min(it["wait_s"], dur)
            ax.broken_barh([(it["start_s"], dur - wait)], (y - 0.35, 0.7), color=color)
            drawn.add(mode)
            if wait > 0:
                ax.broken_barh([(it["end_s"] - wait, wait)], (y - 0.35, 0.7), facecolor="white",
                               edgecolor=color, hatch="///")
                drawn.add("wait")
    ax.set_yticks(range(len(rows)), [f"{m} rank {r['rank']}" for m, r in rows])
    ax.set_xlabel("seconds since start")
    ax.set_title(f"per-rank timeline, ISL {result['config']['isl']}, {result['config']['ranks']} ranks")
    handles = [Patch(color=COLORS.get(m, "tab:purple"), label=f"{m}: computing") for m in result["modes"] if m in drawn]
    if "wait" in drawn:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="///", label="waiting (pulls / collectives)"))
    if "idle" in drawn:
        handles.append(Patch(color="lightgrey", label="zero-token forward (not charged)"))
    ax.legend(handles=handles, fontsize=7, loc="upper right")
    fig.tight_layout(rect=(0, margin / fig.get_figheight(), 1, 1))
    _caveat(fig, [result])
    fig.savefig(path, dpi=110)
    plt.close(fig)


def speedup_vs_cv(results: List[dict], path: str) -> None:
    """Every CV of a sweep: TPS/GPU of every mode (left) and DWDP / DEP (right)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cvs = [r["cv"] for r in results]
    margin = _margin(results)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8 + margin))
    modes = [m for m in results[0]["modes"]]
    for m in modes:
        ax.plot(cvs, [r["modes"].get(m, {}).get("tokens_per_s_per_gpu", float("nan")) for r in results],
                marker="o", color=COLORS.get(m), label=m)
    ax.set_xlabel("ISL coefficient of variation")
    ax.set_ylabel("TPS/GPU")
    ax.set_title("throughput per GPU")
    ax.legend(fontsize=8)
    bx.plot(cvs, [r["speedup_dwdp_over_dep"] for r in results], marker="o", color="black", label="DWDP / DEP")
    bx.axhline(1.0, color="grey", lw=0.8, label="parity")
    bx.set_xlabel("ISL coefficient of variation")
    bx.set_ylabel("TPS/GPU, DWDP / DEP")
    bx.set_title("speedup of DWDP over DEP")
    bx.legend(fontsize=8)
    for a in (ax, bx):
        a.set_xticks(cvs)
    fig.tight_layout(rect=(0, margin / fig.get_figheight(), 1, 1))
    _caveat(fig, results)
    fig.savefig(path, dpi=110)
    plt.close(fig)
