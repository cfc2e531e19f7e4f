"""The --explain plot: per-layer budget vs tokens per iteration, and where rank time goes.

matplotlib is imported inside explain_plot (Agg backend, no display), never at import time.
"""

from __future__ import annotations

from typing import Sequence

from .analysis import Crossover, LayerBudget
from .engine import Run
from .scenario import Scenario


def explain_plot(path: str, scn: Scenario, budgets: Sequence[LayerBudget], run: Run, cross: Crossover) -> str:
    """Write a two-panel PNG to `path` and return it. ImportError if matplotlib is missing."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    t = [x.tokens for x in budgets]
    a.plot(t, [x.compute_s * 1e3 for x in budgets], "o-", label="DWDP compute window")
    a.plot(t, [x.fetch_s * 1e3 for x in budgets], "--", label="DWDP pull (missing experts / NVLink)")
    a.plot(t, [x.dwdp_s * 1e3 for x in budgets], "s-", label="DWDP layer = max(window, pull)")
    a.plot(t, [x.dep_s * 1e3 for x in budgets], "^-", label="DEP layer (incl. all-to-all)")
    if cross.tokens:
        a.axvline(cross.tokens, color="grey", lw=1)
        a.annotate(f"crossover ~{cross.tokens}", (cross.tokens, a.get_ylim()[1] * 0.9), fontsize=8)
    a.axvline(run.mean_tokens_per_iteration, color="red", lw=1, ls=":", label="this workload (mean)")
    a.set_xscale("log", base=2)
    a.set_yscale("log")
    a.set_xlabel("tokens per rank per iteration")
    a.set_ylabel("ms per MoE layer")
    a.set_title(f"{scn.model.name} {scn.precision.name}, {scn.machine.name} x{scn.ranks}")
    a.legend(fontsize=8)

    modes = [run.dwdp, run.dep]
    names = [f"DWDP\n{m.tps_per_gpu:.0f} tok/s/GPU" if m is run.dwdp else f"DEP\n{m.tps_per_gpu:.0f} tok/s/GPU"
             for m in modes]
    busy = [m.busy_frac for m in modes]
    wait = [m.wait_frac for m in modes]
    comm = [m.comm_frac for m in modes]
    b.bar(names, busy, label="compute")
    b.bar(names, wait, bottom=busy, label="waiting (pull / barrier)")
    b.bar(names, comm, bottom=[x + y for x, y in zip(busy, wait)], label="all-to-all")
    b.set_ylabel("fraction of rank time")
    b.set_title(f"ISL {scn.isl}, max_num_tokens {scn.max_num_tokens}: speedup {run.speedup:.2f}x")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
