"""Model configurations and presets of the compact DeepSeek-architecture decoder."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Tuple

from ..config import Choice
from ..workloads.presets import preset_kwargs


def yarn_mscale(factor: float, mscale: float) -> float:
    """YaRN's attention temperature 0.1 * mscale * ln(factor) + 1 (1 when the factor does not stretch)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


@dataclass(frozen=True)
class Yarn:
    """YaRN rope scaling as DeepSeek-V2/V3 (and Qwen3-MoE) configs give it (`rope_scaling` of type "yarn").

    Follows DeepSeek's own DeepseekV2YarnRotaryEmbedding: frequencies ramp from interpolated (divided by
    `factor`) to extrapolated between the dims that make `beta_slow` and `beta_fast` rotations over
    `original_max_position_embeddings`; cos/sin are scaled by mscale(factor, mscale) / mscale(factor,
    mscale_all_dim), and with mscale_all_dim set the attention softmax scale by mscale(factor, mscale_all_dim)^2.
    """

    factor: float
    original_max_position_embeddings: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 0.0

    @property
    def rotary_scale(self) -> float:
        return yarn_mscale(self.factor, self.mscale) / yarn_mscale(self.factor, self.mscale_all_dim)

    @property
    def softmax_scale(self) -> float:
        return yarn_mscale(self.factor, self.mscale_all_dim) ** 2 if self.mscale_all_dim else 1.0

    def correction_range(self, dim: int, base: float) -> Tuple[int, int]:
        """The rotary dims (of dim/2) below which frequencies are kept and above which they are interpolated."""
        def at(rotations):
            turns = self.original_max_position_embeddings / (rotations * 2 * math.pi)
            return dim * math.log(turns) / (2 * math.log(base))
        return max(math.floor(at(self.beta_fast)), 0), min(math.ceil(at(self.beta_slow)), dim - 1)


class AttentionKind(Choice):
    """How a layer attends; a member equals its string, so presets and configs name it as before."""

    MLA = "mla"  # DeepSeek multi-head latent attention
    GQA = "gqa"  # grouped-query attention


class Routing(Choice):
    """How a MoE block picks its experts (ModelConfig.routing; presets give the value)."""

    DEEPSEEK_V3 = "deepseek"  # noaux_tc: sigmoid + correction bias, groups by their two best biased scores
    DEEPSEEK_V2 = "deepseek_v2"  # greedy / group_limited_greedy over softmax scores
    SOFTMAX = "softmax"  # Qwen / Mixtral


@dataclass(frozen=True)
class ModelConfig:
    """A decoder of `layers` layers: the first `first_k_dense` and those in `mlp_only_layers` with a
    dense SwiGLU FFN of `dense_inter`, the rest MoE (`num_experts` routed SwiGLU experts of `moe_inter`,
    `top_k` per token, plus a shared expert of `shared_inter` when > 0).

    attention "mla": DeepSeek multi-head latent attention (q_lora_rank None = plain q_proj);
    attention "gqa": grouped-query attention with `kv_heads` heads of `head_dim`.
    routing "deepseek": DeepSeek-V3 noaux_tc (sigmoid + correction bias + group-limited top-k, weights
    renormalised if `renormalize`, then scaled); "deepseek_v2": softmax, top-k within the `topk_group`
    groups of highest max score (n_group 1: greedy), weights renormalised if `renormalize`, else scaled by
    `routed_scaling`; "softmax": Qwen/Mixtral (softmax, top-k, optional renormalisation).
    rope_interleave: the rotary dims of q and k are stored as interleaved pairs (DeepSeek checkpoints).
    yarn: YaRN rope scaling (None: plain rope with `rope_theta`).
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
    attention: AttentionKind
    heads: int
    routing: Routing = Routing.DEEPSEEK_V3
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
    mlp_only_layers: Tuple[int, ...] = ()
    rope_interleave: bool = False
    yarn: Optional[Yarn] = None

    def __post_init__(self):
        if self.attention not in {a.value for a in AttentionKind}:
            raise ValueError(f"attention={self.attention!r}: use one of {', '.join(a.value for a in AttentionKind)}")
        object.__setattr__(self, "attention", AttentionKind(self.attention))
        if self.routing not in {r.value for r in Routing}:
            raise ValueError(f"routing={self.routing!r}: use one of {', '.join(r.value for r in Routing)}")
        object.__setattr__(self, "routing", Routing(self.routing))
        if not 0 <= self.first_k_dense <= self.layers:
            raise ValueError(f"first_k_dense={self.first_k_dense} must lie in [0, layers={self.layers}]")
        if self.num_experts % self.n_group:
            raise ValueError(f"n_group={self.n_group} must divide num_experts={self.num_experts}")
        object.__setattr__(self, "mlp_only_layers", tuple(sorted(set(self.mlp_only_layers))))

    def is_moe(self, layer_idx: int) -> bool:
        return layer_idx >= self.first_k_dense and layer_idx not in self.mlp_only_layers

    @property
    def moe_layer_ids(self) -> Tuple[int, ...]:
        """The index of each MoE layer (dense layers may sit between them: Qwen3-MoE's mlp_only_layers)."""
        return tuple(i for i in range(self.layers) if self.is_moe(i))


# The runtime's presets: the shared table (workloads/presets.py) under the names `bench --preset` takes.
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
        cfg = replace(cfg, layers=num_layers, first_k_dense=min(cfg.first_k_dense, num_layers - 1),
                      mlp_only_layers=tuple(i for i in cfg.mlp_only_layers if i < num_layers))
        if not cfg.moe_layer_ids:
            raise ValueError(f"--layers {num_layers}: the first {num_layers} layers of {cfg.name} are all dense "
                             f"(mlp_only_layers {list(cfg.mlp_only_layers)}). Fix: more layers.")
    if vocab is not None:
        if vocab < 1:
            raise ValueError(f"--vocab {vocab}: must be >= 1. Fix: e.g. --vocab 1024, or leave it out.")
        cfg = replace(cfg, vocab=vocab)
    return cfg
