"""PNG plots of benchmark results (matplotlib, Agg; imported only when plotting)."""

from __future__ import annotations

from typing import List


def timeline(result: dict, path: str) -> None:
    """Per-rank iterations of one run, one row per (mode, rank): compute in colour, waiting hatched."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(mode, r) for mode, m in result["modes"].items() for r in m["ranks"] if mode in ("dwdp", "dep")]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.5))
    colors = {"dwdp": "tab:blue", "dep": "tab:orange"}
    for y, (mode, r) in enumerate(rows):
        for it in r["iterations"]:
            dur = it["end_s"] - it["start_s"]
            wait = min(it["wait_s"], dur)
            ax.broken_barh([(it["start_s"], dur - wait)], (y - 0.35, 0.7), color=colors[mode])
            if wait > 0:
                ax.broken_barh([(it["end_s"] - wait, wait)], (y - 0.35, 0.7), facecolor="white",
                               edgecolor=colors[mode], hatch="///")
    ax.set_yticks(range(len(rows)), [f"{m} rank {r['rank']}" for m, r in rows])
    ax.set_xlabel("seconds since start (hatched: waiting for pulls / collectives)")
    ax.set_title(f"per-rank timeline, ISL {result['config']['isl']}, {result['config']['ranks']} ranks")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def speedup_vs_cv(results: List[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cvs = [r["cv"] for r in results]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(cvs, [r["speedup_dwdp_over_dep"] for r in results], marker="o")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("ISL coefficient of variation")
    ax.set_ylabel("TPS/GPU, DWDP / DEP")
    ax.set_title("speedup of DWDP over DEP")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
