"""Mode `auto` for a TensorRT-LLM deployment: the performance model (sim.auto) decides from the
loaded model's own configuration, never from a path or a hub id.

TensorRT-LLM attributes read (1.2 line and main): the model's `model_config.pretrained_config` (a
Hugging Face PretrainedConfig; `config` on DecoderModelForCausalLM is the same object), and the
engine's `max_num_tokens` / `llm_args.max_num_tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ...sim.auto import AutoDecision, decide
from ...sim.machines import get_machine
from ...sim.machines import target_machine as sim_target
from ...sim.models import MoEModel, get_precision, gqa, mla
from ...sim.scenario import Scenario
from ...workload import parse_isl


@dataclass(frozen=True)
class Workload:
    """What the decision assumes: ranks in the group, request lengths, tokens per iteration."""

    ranks: int
    isl: str
    max_num_tokens: int


def pretrained_config(model) -> Any:
    """The Hugging Face config TensorRT-LLM built the model from (None where it has none)."""
    mc = getattr(model, "model_config", None)
    cfg = getattr(mc, "pretrained_config", None)
    return cfg if cfg is not None else getattr(model, "config", None)


def sim_model(cfg: Any, name: str = "served model") -> MoEModel:
    """A Hugging Face MoE config (DeepSeek-V3 / Qwen3-MoE style keys) as the performance model sees it.
    Raises KeyError naming the first key it lacks."""
    def opt(key):
        return cfg.get(key) if isinstance(cfg, dict) else getattr(cfg, key, None)

    def get(key, default=None):
        value = opt(key)
        if value is None and default is None:
            raise KeyError(key)
        return default if value is None else value

    hidden, heads = int(get("hidden_size")), int(get("num_attention_heads"))
    inter = int(get("moe_intermediate_size"))
    experts = int(opt("n_routed_experts") or get("num_experts"))
    is_mla = opt("kv_lora_rank") is not None
    if is_mla:
        attn = mla(hidden, heads, opt("q_lora_rank"), int(get("kv_lora_rank")),
                   int(get("qk_nope_head_dim")), int(get("qk_rope_head_dim")), int(get("v_head_dim")))
    else:
        attn = gqa(hidden, heads, int(get("num_key_value_heads", heads)), int(get("head_dim", hidden // heads)))
    return MoEModel(name, hidden, int(get("num_hidden_layers")), int(get("first_k_dense_replace", 0)),
                    int(get("intermediate_size", 0)), inter, experts, int(get("num_experts_per_tok")),
                    int(get("n_shared_experts", 0)) if is_mla else 0, attn, "TensorRT-LLM model config",
                    int(get("vocab_size", 0)))


def target_machine(name: Optional[str]) -> str:
    """dwdp.machine, else the profile whose device name matches this GPU, else h200."""
    import torch
    return sim_target(name, torch.cuda.get_device_name() if torch.cuda.is_available() else None)


def predict(model: MoEModel, work: Workload, requested: str, machine: Optional[str], fp8: bool) -> AutoDecision:
    scn = Scenario(get_machine(target_machine(machine)), model, get_precision("fp8" if fp8 else "bf16"), work.ranks,
                   parse_isl(work.isl), work.max_num_tokens)
    return decide(scn, "context", requested)
