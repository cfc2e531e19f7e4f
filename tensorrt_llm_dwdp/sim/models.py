"""MoE model presets (shapes from the models' published config.json) and precisions.

Only what the cost model needs: hidden size, layer counts, expert and attention shapes.
Parameter counts are in weights (elements), bytes come from a Precision.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Dict, Optional, Tuple

from ..runtime.model_config import AttentionKind, ModelConfig, cut
from ..workloads.presets import MODEL_PRESETS, SOURCES, preset_kwargs


@dataclass(frozen=True)
class Attention:
    """Attention of one layer, as prefill computes it.

    heads: query heads.  qk_dim, v_dim: per-head dims of q·k and of v (MLA in prefill runs as
        multi-head attention with qk_dim = nope + rope and v_dim = v_head_dim).
    proj_params: weights of all q/k/v/o projections of one layer (elements).
    o_params: of proj_params, the output projection's (a recipe may store it apart).
    kv_bytes_per_token: KV-cache bytes one token adds per layer (BF16), read by later chunks.
    """

    heads: int
    qk_dim: int
    v_dim: int
    proj_params: int
    kv_bytes_per_token: int
    o_params: int = 0


def mla(hidden: int, heads: int, q_lora: Optional[int], kv_lora: int, nope: int, rope: int, v: int) -> Attention:
    """DeepSeek multi-head latent attention: q_a/q_b (or q_proj), kv_a, kv_b, o projections."""
    q = hidden * heads * (nope + rope) if q_lora is None else hidden * q_lora + q_lora * heads * (nope + rope)
    kv = hidden * (kv_lora + rope) + kv_lora * heads * (nope + v)
    o = heads * v * hidden
    return Attention(heads, nope + rope, v, q + kv + o, 2 * (kv_lora + rope), o)


def gqa(hidden: int, heads: int, kv_heads: int, head_dim: int) -> Attention:
    """Grouped-query attention: q, k, v, o projections."""
    o = heads * head_dim * hidden
    params = hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + o
    return Attention(heads, head_dim, head_dim, params, 2 * 2 * kv_heads * head_dim, o)


@dataclass(frozen=True)
class MoEModel:
    """Shapes of a MoE transformer.

    layers: decoder layers; the first dense_layers have a dense FFN of dense_inter, the rest a
        MoE of `experts` routed experts (SwiGLU, hidden x moe_inter, top_k per token) plus
        `shared` shared experts of moe_inter each.
    source: where the shapes come from.
    vocab: vocabulary (embedding and LM head; for the memory check only).
    """

    name: str
    hidden: int
    layers: int
    dense_layers: int
    dense_inter: int
    moe_inter: int
    experts: int
    top_k: int
    shared: int
    attention: Attention
    source: str
    vocab: int = 0

    @property
    def moe_layers(self) -> int:
        return self.layers - self.dense_layers

    @property
    def expert_params(self) -> int:
        """Weights of one routed expert: gate, up (hidden x inter each) and down."""
        return 3 * self.hidden * self.moe_inter


def moe_model(name: str, source: str, *, vocab: int, hidden: int, layers: int, first_k_dense: int, dense_inter: int,
              num_experts: int, top_k: int, moe_inter: int, shared_inter: int, attention: str, heads: int,
              kv_heads: int = 0, head_dim: int = 0, q_lora_rank: Optional[int] = None, kv_lora_rank: int = 0,
              qk_nope_dim: int = 0, qk_rope_dim: int = 0, v_head_dim: int = 0, **_routing_and_norms) -> MoEModel:
    """The shapes of a preset (keyword arguments of workloads.presets.MODEL_PRESETS, i.e. runtime ModelConfig's
    fields) as the cost model sees them; routing and norm options do not change the costs and are ignored."""
    attn = (mla(hidden, heads, q_lora_rank, kv_lora_rank, qk_nope_dim, qk_rope_dim, v_head_dim)
            if AttentionKind(attention) is AttentionKind.MLA else gqa(hidden, heads, kv_heads, head_dim))
    shared = shared_inter // moe_inter if moe_inter else 0
    return MoEModel(name, hidden, layers, first_k_dense, dense_inter, moe_inter, num_experts, top_k, shared, attn,
                    source, vocab)


def model_of(c: ModelConfig, source: str = "runtime model config") -> MoEModel:
    """A runtime ModelConfig (a preset, or a checkpoint's or served model's config.json) as the cost model sees
    it: dense layers counted wherever they sit. Mode auto in the bench and in the adapter predicts with it."""
    kw = {f.name: getattr(c, f.name) for f in fields(c) if f.name != "name"}
    kw["first_k_dense"] = c.layers - len(c.moe_layer_ids)
    return moe_model(c.name, source, **kw)


# The simulator's presets: the shared table, minus the CPU-sized test model.
MODELS: Dict[str, MoEModel] = {n: model_of(ModelConfig(n, **preset_kwargs(n)), SOURCES[n])
                               for n in MODEL_PRESETS if n != "tiny"}


def get_model(name: str, layers: Optional[int] = None) -> MoEModel:
    """The preset `name`; with `layers`, cut to that many decoder layers as `trtllm-dwdp bench --layers` cuts its
    model (runtime.model_config.cut: dense ones kept first, at least one MoE layer)."""
    key = name.strip().lower()
    if key not in MODELS:
        raise ValueError(f"--model {name!r} is not a preset. Fix: use one of {', '.join(MODELS)}.")
    if layers is None:
        return MODELS[key]
    return model_of(cut(ModelConfig(key, **preset_kwargs(key)), layers), SOURCES[key])


@dataclass(frozen=True)
class Precision:
    """How weights are stored and which tensor cores run them.

    expert_bits: bits per routed-expert weight.  scale_bits: bits of block scales per weight
        (NVFP4: one FP8 scale per 16 weights = 0.5; FP8 DeepSeek-style: one FP32 per 128x128).
    expert_compute / dense_compute: tensor-core precision of expert GEMMs and of the other
        GEMMs (attention projections, shared and dense FFN); core attention runs in BF16.
    dense_bytes: bytes per weight of the non-expert GEMMs.
    dispatch_bytes: bytes per hidden element a DEP dispatch sends (quantised activations plus
        their scales); combine is BF16 (2 bytes).
    qkv_compute, qkv_bytes / o_compute, o_bytes: the attention's q/k/v projections and its output
        projection where the recipe stores them apart from the MLPs ("" / 0: dense_compute / dense_bytes).
    """

    name: str
    expert_bits: float
    scale_bits: float
    expert_compute: str
    dense_compute: str
    dense_bytes: float
    dispatch_bytes: float
    combine_bytes: float = 2.0
    qkv_compute: str = ""
    qkv_bytes: float = 0.0
    o_compute: str = ""
    o_bytes: float = 0.0

    def projections(self, a: Attention) -> Tuple[Tuple[int, str, float], ...]:
        """(weights, tensor-core precision, bytes per weight) of one layer's q/k/v projections and of its
        output projection."""
        return ((a.proj_params - a.o_params, self.qkv_compute or self.dense_compute, self.qkv_bytes or self.dense_bytes),
                (a.o_params, self.o_compute or self.dense_compute, self.o_bytes or self.dense_bytes))

    def expert_bytes_per_weight(self, count_scales: bool = True) -> float:
        return (self.expert_bits + (self.scale_bits if count_scales else 0.0)) / 8.0

    def expert_bytes(self, model: MoEModel, count_scales: bool = True) -> float:
        """Bytes of one routed expert in this precision."""
        return model.expert_params * self.expert_bytes_per_weight(count_scales)


PRECISION_SPECS: Dict[str, Precision] = {
    "bf16": Precision("bf16", 16, 0.0, "bf16", "bf16", 2.0, 2.0),
    # NOTE: DeepSeek FP8 checkpoints keep 128x128 FP32 block scales; activations get 1x128 scales.
    "fp8": Precision("fp8", 8, 32 / (128 * 128), "fp8", "fp8", 1.0, 1.0 + 4 / 128),
    # NVFP4 (E2M1 + an E4M3 scale per 16) as NVIDIA's DeepSeek-R1-0528-NVFP4-v2 checkpoint stores it, the one
    # the published DWDP runs use: every MLP (routed and shared experts, dense FFNs) and, new in v2, the
    # attention output projection (its model card: "additionally quantizes the wo module"); the q/kv
    # projections stay BF16 (v1's weights list self_attn q_a/q_b/kv_a/kv_b/o_proj as BF16, MLPs as U8 + E4M3
    # scales). Other models get the same recipe (an assumption). Dispatch sends NVFP4 activations.
    "nvfp4": Precision("nvfp4", 4, 8 / 16, "nvfp4", "nvfp4", 0.5 + 1 / 16, 0.5 + 1 / 16,
                       qkv_compute="bf16", qkv_bytes=2.0),
}


def get_precision(name: str) -> Precision:
    key = name.strip().lower()
    if key not in PRECISION_SPECS:
        raise ValueError(f"--precision {name!r} is not a precision. Fix: use one of {', '.join(PRECISION_SPECS)}.")
    return PRECISION_SPECS[key]


def model_summary(model: MoEModel, precision: Precision) -> Tuple[str, ...]:
    """Human-readable lines: expert bytes per layer and in total."""
    per_layer = precision.expert_bytes(model) * model.experts
    return (f"{model.name}: {model.layers} layers ({model.moe_layers} MoE), {model.experts} experts top-{model.top_k}, "
            f"hidden {model.hidden}, expert inter {model.moe_inter}",
            f"routed experts in {precision.name}: {per_layer / 1e9:.2f} GB per layer, "
            f"{per_layer * model.moe_layers / 1e9:.0f} GB in all")
