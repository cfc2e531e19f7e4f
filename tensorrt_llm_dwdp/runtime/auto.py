"""Mode `auto` for the runtime: ask the performance model whether DWDP pays for this model and
workload on the target machine, log the reason, and warn when a requested DWDP cannot pay."""

from __future__ import annotations

from typing import Optional

import torch

from ..sim.auto import AutoDecision, decide
from ..sim.machines import MACHINES, get_machine
from ..sim.models import MoEModel, get_precision, gqa, mla
from ..sim.scenario import Scenario
from ..workload import parse_isl
from .config import ModelConfig


def sim_model(c: ModelConfig) -> MoEModel:
    """The runtime's model shapes as the performance model sees them."""
    attn = (mla(c.hidden, c.heads, c.q_lora_rank, c.kv_lora_rank, c.qk_nope_dim, c.qk_rope_dim, c.v_head_dim)
            if c.attention == "mla" else gqa(c.hidden, c.heads, c.kv_heads, c.head_dim))
    shared = c.shared_inter // c.moe_inter if c.moe_inter else 0
    return MoEModel(c.name, c.hidden, c.layers, c.first_k_dense, c.dense_inter, c.moe_inter, c.num_experts, c.top_k,
                    shared, attn, "runtime model config", c.vocab)


def target_machine(name: Optional[str]) -> str:
    """--sim-machine, else the profile whose device name matches this GPU, else h200."""
    if name:
        return get_machine(name).name
    if torch.cuda.is_available():
        dev = torch.cuda.get_device_name()
        for key, m in MACHINES.items():
            if m.device_match and m.device_match in dev:
                return key
    return "h200"


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
