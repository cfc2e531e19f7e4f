"""Model configurations and presets of the compact DeepSeek-architecture decoder."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional


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


PRESETS = {
    # CPU-sized: every feature (MLA, dense first layer, grouped routing, shared expert) at toy width.
    "tiny": ModelConfig("tiny", vocab=512, hidden=64, layers=3, first_k_dense=1, dense_inter=128, num_experts=16,
                        top_k=4, moe_inter=32, shared_inter=32, attention="mla", heads=4, n_group=4, topk_group=2,
                        routed_scaling=2.5, q_lora_rank=48, kv_lora_rank=32, qk_nope_dim=16, qk_rope_dim=8,
                        v_head_dim=16),
    # deepseek-ai/DeepSeek-V2-Lite config.json
    "deepseek-v2-lite": ModelConfig("deepseek-v2-lite", vocab=102400, hidden=2048, layers=27, first_k_dense=1,
                                    dense_inter=10944, num_experts=64, top_k=6, moe_inter=1408, shared_inter=2 * 1408,
                                    attention="mla", heads=16, routing="softmax", renormalize=False, q_lora_rank=None,
                                    kv_lora_rank=512,
                                    qk_nope_dim=128, qk_rope_dim=64, v_head_dim=128),
    # Qwen/Qwen3-30B-A3B config.json
    "qwen3-30b-a3b": ModelConfig("qwen3-30b-a3b", vocab=151936, hidden=2048, layers=48, first_k_dense=0,
                                 dense_inter=0, num_experts=128, top_k=8, moe_inter=768, shared_inter=0,
                                 attention="gqa", heads=32, kv_heads=4, head_dim=128, qk_norm=True, routing="softmax",
                                 rope_theta=1e6),
    # deepseek-ai/DeepSeek-V3 config.json (use num_layers to keep a few layers)
    "deepseek-v3-layers": ModelConfig("deepseek-v3-layers", vocab=129280, hidden=7168, layers=61, first_k_dense=3,
                                      dense_inter=18432, num_experts=256, top_k=8, moe_inter=2048, shared_inter=2048,
                                      attention="mla", heads=128, n_group=8, topk_group=4, routed_scaling=2.5,
                                      q_lora_rank=1536, kv_lora_rank=512, qk_nope_dim=128, qk_rope_dim=64,
                                      v_head_dim=128),
}


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
