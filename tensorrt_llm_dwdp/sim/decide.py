"""Mode `auto`: DWDP or DEP for a configured workload, with the reason and the crossover.

`decide` is a pure function of the Scenario (deterministic; no logging, no I/O). `predict` is the one
prediction both hosts' mode auto makes (the runtime's bench, the TensorRT-LLM adapter): they log `reason`
and, where set, `warning`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

from ..config import Mode
from ..workloads.requests import parse_isl
from .analysis import crossover
from .engine import simulate
from .machines import get_machine, target_machine
from .models import MoEModel, get_precision
from .scenario import Scenario

PHASES = ("context", "generation")
MODES = (Mode.AUTO.value, Mode.DWDP.value, Mode.DEP.value)


@dataclass(frozen=True)
class AutoDecision:
    """mode: "dwdp" or "dep".  reason: one sentence with the numbers behind it.
    speedup: predicted DWDP / DEP TPS per GPU (None where not simulated).
    crossover_tokens: tokens per rank per iteration from which DWDP wins (None: not below the
        search limit, or not computed).  mean_tokens: the workload's tokens per rank per iteration.
    warning: set when DWDP was requested, or is in use, but cannot pay; names the crossover."""

    mode: Mode
    reason: str
    speedup: Optional[float]
    crossover_tokens: Optional[int]
    mean_tokens: Optional[float]
    warning: Optional[str] = None


def decide(scn: Scenario, phase: str = "context", requested: str = "auto", margin: float = 0.0) -> AutoDecision:
    """Pick "dwdp" when its predicted TPS/GPU beats DEP's by more than `margin` (a fraction).

    phase: "context" (prefill; what DWDP is for) or "generation" (always DEP: one token per
    request per iteration leaves no window to hide a pull). requested: the configured mode;
    "dwdp" that cannot pay gets a warning (the decision still says which mode would pay).
    """
    if phase not in PHASES:
        raise ValueError(f"phase {phase!r}: unknown. Fix: one of {', '.join(PHASES)}.")
    if requested not in MODES:
        raise ValueError(f"mode {requested!r}: unknown. Fix: one of {', '.join(MODES)}.")
    if margin < 0:
        raise ValueError(f"margin {margin}: must be >= 0. Fix: e.g. 0.02 for 2%.")

    def out(mode, reason, speedup=None, cross=None, mean=None):
        warn = None
        if requested == Mode.DWDP and mode is Mode.DEP:
            where = f"it pays from ~{cross} tokens per rank per iteration" if cross else "it does not pay here"
            now = f" (this workload: {mean:.0f})" if mean is not None else ""
            warn = (f"DWDP is configured but {reason}; {where}{now}. "
                    f"Use DEP, or raise max_num_tokens past the crossover.")
        return AutoDecision(mode, reason, speedup, cross, mean, warn)

    if phase == "generation":
        return out(Mode.DEP, "generation iterations carry ~1 token per request: no compute window hides a pull")
    mem = scn.memory()
    if not mem.dwdp_fits:
        return out(Mode.DEP, f"DWDP's weights and {scn.slots} prefetch slots need {mem.dwdp_gb:.0f} GB per GPU, "
                          f"more than {mem.capacity_gb:.0f} GB")
    run = simulate(scn)
    cross = crossover(scn).tokens
    mean = run.mean_tokens_per_iteration
    s = run.speedup
    facts = f"predicted {s:.2f}x DEP's TPS/GPU at {mean:.0f} tokens per rank per iteration"
    if s > 1.0 + margin:
        return out(Mode.DWDP, facts, s, cross, mean)
    return out(Mode.DEP, facts + (f" (margin {margin:.0%})" if margin else ""), s, cross, mean)


def predict(model: MoEModel, precision: str, ranks: int, isl: str, max_num_tokens: int, requested: str = "auto",
            machine: Optional[str] = None, device_name: Optional[str] = None,
            option_names: Optional[Dict[str, str]] = None) -> AutoDecision:
    """The context-phase decision for `ranks` GPUs serving `model` with `precision` experts ("bf16", "fp8"),
    requests of `isl` (parse_isl's syntax) and `max_num_tokens` per iteration, on the profile `machine`, else
    the one matching the host's GPU (`device_name`), else h200.

    A run the performance model cannot judge (more ranks than the machine's NVLink domain, say): mode auto
    raises ValueError (the host names its mode option); a requested mode keeps it, with a warning. Messages
    name the options in the host's words: `option_names` maps the simulator's ("--machine") to the host's."""
    name = target_machine(machine, device_name)
    try:
        scn = Scenario(get_machine(name), model, get_precision(precision), ranks, parse_isl(isl), max_num_tokens)
    except ValueError as e:
        why = str(e)
        for ours, theirs in (option_names or {}).items():
            why = why.replace(ours, theirs)
        why = f"the performance model cannot judge this run on {name}: {why}"
        if requested == Mode.AUTO:
            raise ValueError(why) from None
        return AutoDecision(Mode(requested), f"no prediction on {name}", None, None, None, warning=why)
    return decide(scn, "context", requested)
