"""Model configurations and presets of the compact DeepSeek-architecture decoder."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from ..presets import preset_kwargs


@dataclass(frozen=True)
class ModelConfig:
    """A decoder of `layers` layers: the first `first_k_dense` with a dense SwiGLU FFN of
    `dense_inter`, the rest MoE (`num_experts` routed SwiGLU experts of `moe_inter`, `top_k`
    per token, plus a shared expert of `shared_inter` when > 0).

    attention "mla": DeepSeek multi-head latent attention (q_lora_rank None = plain q_proj);
    attention "gqa": grouped-query attention with `kv_heads` heads of `head_dim`.
    routing "deepseek": sigmoid + correction bias + group-limited top-k; "softmax": Qwen/Mixtral.
    """

    name: str
    vocab: int
    hidden: int
    layers: int
    first_k_dense: int
    dense_inter: int
    num_experts: int
    top_k: int
    moe_inter: int
    shared_inter: int
    attention: str
    heads: int
    routing: str = "deepseek"
    n_group: int = 1
    topk_group: int = 1
    routed_scaling: float = 1.0
    renormalize: bool = True
    kv_heads: int = 0
    qk_norm: bool = False
    head_dim: int = 0
    q_lora_rank: Optional[int] = None
    kv_lora_rank: int = 0
    qk_nope_dim: int = 0
    qk_rope_dim: int = 0
    v_head_dim: int = 0
    rope_theta: float = 10000.0
    rms_eps: float = 1e-6

    def __post_init__(self):
        if self.attention not in ("mla", "gqa"):
            raise ValueError(f"attention={self.attention!r}: use 'mla' or 'gqa'")
        if self.routing not in ("deepseek", "softmax"):
            raise ValueError(f"routing={self.routing!r}: use 'deepseek' or 'softmax'")
        if not 0 <= self.first_k_dense <= self.layers:
            raise ValueError(f"first_k_dense={self.first_k_dense} must lie in [0, layers={self.layers}]")
        if self.num_experts % self.n_group:
            raise ValueError(f"n_group={self.n_group} must divide num_experts={self.num_experts}")

    @property
    def moe_layer_ids(self):
        return tuple(range(self.first_k_dense, self.layers))


# The runtime's presets: the shared table (presets.py) under the names `bench --preset` takes.
RUNTIME_PRESETS = ("tiny", "deepseek-v2-lite", "qwen3-30b-a3b", "deepseek-v3-layers")
PRESETS = {name: ModelConfig(name, **preset_kwargs(name)) for name in RUNTIME_PRESETS}


def preset(name: str, num_layers: Optional[int] = None, vocab: Optional[int] = None) -> ModelConfig:
    """A preset, optionally cut to `num_layers` (dense layers kept first) and a smaller vocab."""
    if name not in PRESETS:
        raise ValueError(f"--preset {name!r}: unknown. Fix: use one of {', '.join(PRESETS)}.")
    return cut(PRESETS[name], num_layers, vocab)


def cut(cfg: ModelConfig, num_layers: Optional[int] = None, vocab: Optional[int] = None) -> ModelConfig:
    """cfg with `num_layers` decoder layers (dense ones first, at least one MoE layer) and a smaller vocab."""
    if num_layers is not None:
        if num_layers < 1:
            raise ValueError(f"--layers {num_layers}: must be >= 1. Fix: e.g. --layers {min(cfg.layers, 4)}, "
                             "or leave it out for all layers.")
        if num_layers > cfg.layers:
            raise ValueError(f"--layers {num_layers}: {cfg.name} has {cfg.layers} layers. Fix: --layers <= {cfg.layers}.")
        cfg = replace(cfg, layers=num_layers, first_k_dense=min(cfg.first_k_dense, num_layers - 1))
    if vocab is not None:
        if vocab < 1:
            raise ValueError(f"--vocab {vocab}: must be >= 1. Fix: e.g. --vocab 1024, or leave it out.")
        cfg = replace(cfg, vocab=vocab)
    return cfg
