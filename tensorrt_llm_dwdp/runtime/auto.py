"""Mode `auto` for the runtime: ask the performance model whether DWDP pays for this model and
workload on the target machine, log the reason, and warn when a requested DWDP cannot pay."""

from __future__ import annotations

from dataclasses import fields
from typing import Optional

from ..sim.auto import AutoDecision, decide
from ..sim.machines import get_machine
from ..sim.machines import target_machine as sim_target
from ..sim.models import MoEModel, get_precision, moe_model
from ..sim.scenario import Scenario
from ..workload import parse_isl
from .capacity import gpu_names
from .config import ModelConfig


def sim_model(c: ModelConfig) -> MoEModel:
    """The runtime's model shapes as the performance model sees them."""
    kw = {f.name: getattr(c, f.name) for f in fields(c) if f.name != "name"}
    kw["first_k_dense"] = c.layers - len(c.moe_layer_ids)  # the cost model counts dense layers, wherever they sit
    return moe_model(c.name, "runtime model config", **kw)


def target_machine(name: Optional[str]) -> str:
    """--sim-machine, else the profile whose device name matches this GPU, else h200. The GPU's name comes from
    nvidia-smi, so the launcher (no CUDA, no torch) and its ranks decide alike."""
    names = gpu_names()
    return sim_target(name, names[0] if names else None)


def choose(c: ModelConfig, ranks: int, isl: str, max_num_tokens: int, requested: str = "auto",
           machine: Optional[str] = None, precision: str = "bf16") -> AutoDecision:
    name = target_machine(machine)
    try:
        scn = Scenario(get_machine(name), sim_model(c), get_precision(precision), ranks, parse_isl(isl),
                       max_num_tokens)
    except ValueError as e:
        # The model's limits (an NVLink domain's GPUs, say) are in its own options' words: say ours.
        why = str(e).replace("--machine", "--sim-machine")
        if requested == "auto":
            raise ValueError(f"--modes auto: the performance model cannot judge this run on {name}: {why}") from None
        return AutoDecision(requested, f"no prediction on {name}", None, None, None,
                            warning=f"the performance model cannot judge this run on {name}: {why}")
    return decide(scn, "context", requested)
