"""Model presets: one table of shapes, as keyword arguments, read by the runtime and the simulator.

Each entry is what `runtime.model_config.ModelConfig(name=..., **kwargs)` takes; the simulator reads the
shape keys it needs (`sim.models.moe_model`). Pure data: no torch, nothing at import time.
Shapes are copied from each model's published config.json (named in SOURCES).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

_DSV3 = dict(vocab=129280, hidden=7168, layers=61, first_k_dense=3, dense_inter=18432, num_experts=256, top_k=8,
             moe_inter=2048, shared_inter=2048, attention="mla", heads=128, n_group=8, topk_group=4,
             routed_scaling=2.5, q_lora_rank=1536, kv_lora_rank=512, qk_nope_dim=128, qk_rope_dim=64, v_head_dim=128)

_TABLE = {
    # CPU-sized: every feature (MLA, dense first layer, grouped routing, shared expert) at toy width. Three MoE
    # layers, one more than DWDP's default prefetch depth (2), so the slot ring refills and DWDP pulls every step.
    "tiny": dict(vocab=512, hidden=64, layers=4, first_k_dense=1, dense_inter=128, num_experts=16, top_k=4,
                 moe_inter=32, shared_inter=32, attention="mla", heads=4, n_group=4, topk_group=2,
                 routed_scaling=2.5, q_lora_rank=48, kv_lora_rank=32, qk_nope_dim=16, qk_rope_dim=8, v_head_dim=16),
    "deepseek-v2-lite": dict(vocab=102400, hidden=2048, layers=27, first_k_dense=1, dense_inter=10944, num_experts=64,
                             top_k=6, moe_inter=1408, shared_inter=2 * 1408, attention="mla", heads=16,
                             routing="softmax", renormalize=False, q_lora_rank=None, kv_lora_rank=512,
                             qk_nope_dim=128, qk_rope_dim=64, v_head_dim=128),
    "qwen3-30b-a3b": dict(vocab=151936, hidden=2048, layers=48, first_k_dense=0, dense_inter=0, num_experts=128,
                          top_k=8, moe_inter=768, shared_inter=0, attention="gqa", heads=32, kv_heads=4, head_dim=128,
                          qk_norm=True, routing="softmax", rope_theta=1e6),
    "qwen3-235b-a22b": dict(vocab=151936, hidden=4096, layers=94, first_k_dense=0, dense_inter=0, num_experts=128,
                            top_k=8, moe_inter=1536, shared_inter=0, attention="gqa", heads=64, kv_heads=4,
                            head_dim=128, qk_norm=True, routing="softmax", rope_theta=1e6),
    "deepseek-v3": _DSV3,
    "deepseek-r1": _DSV3,
}

#: name -> keyword arguments of runtime.model_config.ModelConfig (read-only)
MODEL_PRESETS: Mapping[str, Mapping] = MappingProxyType({k: MappingProxyType(v) for k, v in _TABLE.items()})

SOURCES: Mapping[str, str] = MappingProxyType({
    "tiny": "a CPU-sized test model (not a published model)",
    "deepseek-v2-lite": "huggingface.co/deepseek-ai/DeepSeek-V2-Lite config.json",
    "qwen3-30b-a3b": "huggingface.co/Qwen/Qwen3-30B-A3B config.json",
    "qwen3-235b-a22b": "huggingface.co/Qwen/Qwen3-235B-A22B config.json",
    "deepseek-v3": "huggingface.co/deepseek-ai/DeepSeek-V3 config.json",
    "deepseek-r1": "huggingface.co/deepseek-ai/DeepSeek-R1 config.json (DeepSeek-V3 shapes)",
})

#: runtime preset names that are another preset under an older name (`bench --preset deepseek-v3-layers`)
ALIASES: Mapping[str, str] = MappingProxyType({"deepseek-v3-layers": "deepseek-v3"})


def preset_kwargs(name: str) -> dict:
    """A fresh dict of the preset's keyword arguments (aliases resolved); KeyError when unknown."""
    return dict(MODEL_PRESETS[ALIASES.get(name, name)])
