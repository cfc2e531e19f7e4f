"""A Hugging Face `config.json` as a ModelConfig, for the model families the decoder computes exactly.

Two formats are read:
- the Hub's, as each model's own code writes it: DeepSeek-V2/V3/R1 with `rope_theta`, `rope_scaling`
  (`type`), `n_routed_experts`, `topk_method`, `scoring_func`; Qwen3-MoE with `num_experts`;
- transformers 5's: `rope_parameters` (`rope_type`, `rope_theta`), `num_local_experts`, `rope_interleave`,
  and no `topk_method` / `scoring_func` for deepseek_v3, whose model type implies noaux_tc over sigmoid scores.
Whatever the decoder does not compute (another model type, rope type, scoring function, a bias, tied
embeddings, a null or a float where an integer belongs) raises CheckpointError: one line naming the key,
its value and the fix, before any rank starts.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

from .model_config import ModelConfig, Routing, Yarn


class CheckpointError(ValueError):
    """A checkpoint directory cannot be read as a supported model; the message names the file."""


FAMILIES = {"deepseek_v2": "DeepSeek-V2", "deepseek_v3": "DeepSeek-V3/R1", "qwen3_moe": "Qwen3-MoE"}
_MISSING = object()
_YARN_KEYS = {"rope_type", "type", "rope_theta", "factor", "original_max_position_embeddings", "beta_fast",
              "beta_slow", "mscale", "mscale_all_dim", "truncate"}


class _Keys:
    """Typed reads of one config.json; each failure is a CheckpointError naming the key and its value."""

    def __init__(self, h: Dict[str, Any], where: str, prefix: str = ""):
        self.h, self.where, self.prefix = h, where, prefix  # prefix: "rope_parameters." for a nested object

    def refuse(self, key: str, value, problem: str, fix: str) -> CheckpointError:
        return CheckpointError(f"{self.where}: {self.prefix}{key}={value!r}: {problem}. Fix: {fix}.")

    def get(self, key: str, default=_MISSING):
        if key not in self.h:
            if default is _MISSING:
                raise CheckpointError(f"{self.where}: no {self.prefix + key!r}. Fix: use the config.json written "
                                      "with the checkpoint (a DeepSeek-V2/V3/R1 or Qwen3-MoE model).")
            return default
        return self.h[key]

    def int(self, key: str, default=_MISSING, minimum: int = 1) -> int:
        v = self.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.refuse(key, v, "must be an integer", f"set {key} to an integer >= {minimum}")
        if v < minimum:
            raise self.refuse(key, v, f"must be >= {minimum}", f"set {key} to an integer >= {minimum}")
        return v

    def optional_int(self, key: str, default=None, minimum: int = 1) -> Any:
        return None if self.get(key, default) is None else self.int(key, default, minimum)

    def float(self, key: str, default=_MISSING, positive: bool = True) -> float:
        v = self.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (positive and v <= 0):
            raise self.refuse(key, v, "must be a positive number" if positive else "must be a number",
                              f"set {key} to a number")
        return float(v)

    def bool(self, key: str, default=_MISSING) -> bool:
        v = self.get(key, default)
        if not isinstance(v, bool):
            raise self.refuse(key, v, "must be true or false", f"set {key} to true or false")
        return v

    def expect(self, key: str, allowed, default, why: str) -> Any:
        v = self.get(key, default)
        if v not in allowed:
            ok = " or ".join(repr(a) for a in allowed)
            raise self.refuse(key, v, why, f"a checkpoint with {key} {ok}")
        return v

    def one_of(self, *keys: str, **kw) -> int:
        """An integer stored under any of several names (the formats name it differently); all must agree."""
        present = [k for k in keys if k in self.h]
        if not present:
            return self.int(keys[0], **kw)
        values = {k: self.int(k, **kw) for k in present}
        if len(set(values.values())) > 1:
            raise self.refuse(present[1], values[present[1]], f"disagrees with {present[0]}={values[present[0]]}",
                              "keep one of them")
        return values[present[0]]


def parse_config(h: Dict[str, Any], where: str, name: str = "checkpoint") -> ModelConfig:
    """The ModelConfig of config.json `h` (as loaded); `where` starts every error message."""
    if not isinstance(h, dict):
        raise CheckpointError(f"{where}: not a JSON object. Fix: use the checkpoint's config.json.")
    k = _Keys(h, where)
    family = k.get("model_type")
    if family not in FAMILIES:
        supported = ", ".join(f"{t} ({n})" for t, n in FAMILIES.items())
        raise k.refuse("model_type", family, "not a model family the decoder implements",
                       f"use a {supported} checkpoint")
    k.expect("hidden_act", ("silu",), "silu", "the decoder's MLPs are SwiGLU")
    for flag in ("tie_word_embeddings", "attention_bias", "mlp_bias", "use_sliding_window"):
        if k.bool(flag, False):
            raise k.refuse(flag, True, f"{FAMILIES[family]} as the decoder implements it has no {flag}",
                           f"a checkpoint with {flag} false")
    common = dict(name=name, vocab=k.int("vocab_size"), hidden=k.int("hidden_size"),
                  layers=k.int("num_hidden_layers"), heads=k.int("num_attention_heads"),
                  top_k=k.int("num_experts_per_tok"), moe_inter=k.int("moe_intermediate_size"),
                  rms_eps=k.float("rms_norm_eps", 1e-6))
    if family == "qwen3_moe":
        return _qwen3_moe(k, common)
    return _deepseek(k, family, common)


def _rope(k: _Keys, family: str) -> Tuple[float, Any]:
    """(rope_theta, Yarn or None) from rope_parameters (transformers 5) or rope_theta + rope_scaling (Hub)."""
    params, legacy = k.h.get("rope_parameters"), k.h.get("rope_scaling")
    if params is not None and legacy is not None:
        raise k.refuse("rope_scaling", legacy, "given as well as rope_parameters", "keep one of them")
    key = "rope_parameters" if params is not None else "rope_scaling"
    rope = params if params is not None else (legacy or {})
    if not isinstance(rope, dict):
        raise k.refuse(key, rope, "must be an object", f"set {key} as the model's own config writes it")
    r = _Keys(rope, k.where, f"{key}.")
    theta = r.float("rope_theta", k.float("rope_theta", 10000.0))
    kind = rope.get("rope_type", rope.get("type", "default"))
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise r.refuse("partial_rotary_factor", rope["partial_rotary_factor"], "the decoder rotates whole "
                       "rotary dims", "a checkpoint without partial_rotary_factor")
    if kind == "default":
        return theta, None
    if kind != "yarn":
        raise r.refuse("rope_type" if "rope_type" in rope else "type", kind,
                       f"{FAMILIES[family]} is implemented with rope type default or yarn only",
                       "a checkpoint with rope type default or yarn")
    # Qwen3-MoE's code (transformers') scales cos/sin by mscale(factor) and leaves the softmax alone: DeepSeek's
    # YaRN with mscale 1 and no mscale_all_dim, so those two keys are DeepSeek's only.
    keys = _YARN_KEYS - ({"mscale", "mscale_all_dim"} if family == "qwen3_moe" else set())
    extra = sorted(set(rope) - keys)
    if extra:
        raise r.refuse(extra[0], rope[extra[0]], f"not a YaRN key of {FAMILIES[family]}'s code",
                       "leave it out (the attention factor follows from the other keys)")
    if rope.get("truncate", True) is not True:
        raise r.refuse("truncate", rope["truncate"], "the models' YaRN rounds the correction range",
                       "leave truncate out")
    yarn = Yarn(factor=r.float("factor"), original_max_position_embeddings=r.int("original_max_position_embeddings"),
                beta_fast=r.float("beta_fast", 32.0), beta_slow=r.float("beta_slow", 1.0),
                mscale=r.float("mscale", 1.0, positive=False),
                mscale_all_dim=r.float("mscale_all_dim", 0.0, positive=False))
    return theta, yarn


def _deepseek(k: _Keys, family: str, common: dict) -> ModelConfig:
    v3 = family == "deepseek_v3"
    # What DeepSeek's own MoEGate implements per version (transformers' too, where it has the key).
    method = k.expect("topk_method", ("noaux_tc",) if v3 else ("greedy", "group_limited_greedy"),
                      "noaux_tc" if v3 else "greedy", f"{FAMILIES[family]}'s gate implements no other")
    k.expect("scoring_func", ("sigmoid",) if v3 else ("softmax",), "sigmoid" if v3 else "softmax",
             f"{FAMILIES[family]} with topk_method {method!r} scores experts so")
    k.expect("moe_layer_freq", (1,), 1, "the decoder puts a MoE in every layer after first_k_dense_replace")
    # NOTE: DeepSeek-V2/V3 checkpoints store q_pe / k_pe as interleaved pairs; DeepSeek's code always
    # de-interleaves them. transformers 5 writes rope_interleave (deepseek_v3) or always interleaves (deepseek_v2).
    interleave = k.bool("rope_interleave", True)
    if not v3 and not interleave:
        raise k.refuse("rope_interleave", False, "DeepSeek-V2's code always rotates interleaved pairs",
                       "leave rope_interleave out")
    # num_key_value_heads is not read: DeepSeek's MLA decompresses k and v for every head
    experts = k.one_of("n_routed_experts", "num_local_experts", "num_experts")
    grouped = method != "greedy"
    n_group = (k.optional_int("n_group") or 1) if grouped else 1
    topk_group = (k.optional_int("topk_group") or 1) if grouped else 1
    if experts % n_group or not 1 <= topk_group <= n_group:
        raise k.refuse("n_group", n_group, f"must divide n_routed_experts={experts} and be >= "
                       f"topk_group={topk_group}", "use the checkpoint's own n_group and topk_group")
    top_k = common["top_k"]
    if top_k > topk_group * (experts // n_group):
        raise k.refuse("num_experts_per_tok", top_k, f"the {topk_group} kept groups hold "
                       f"{topk_group * experts // n_group} experts", "use the checkpoint's own num_experts_per_tok")
    rope_dim = k.int("qk_rope_head_dim")
    if rope_dim % 2:
        raise k.refuse("qk_rope_head_dim", rope_dim, "rotary dims come in pairs", "an even qk_rope_head_dim")
    first_k_dense = k.int("first_k_dense_replace", 0, minimum=0)
    if first_k_dense >= common["layers"]:
        raise k.refuse("first_k_dense_replace", first_k_dense, f"leaves none of the {common['layers']} layers MoE",
                       "a MoE checkpoint (first_k_dense_replace < num_hidden_layers)")
    _check_quantization(k)
    theta, yarn = _rope(k, family)
    return ModelConfig(
        **common, first_k_dense=first_k_dense,
        dense_inter=k.int("intermediate_size") if first_k_dense else 0,  # read only where a dense layer uses it
        num_experts=experts,
        shared_inter=(k.optional_int("n_shared_experts", 0, minimum=0) or 0) * common["moe_inter"],
        attention="mla", routing=Routing.DEEPSEEK_V3 if v3 else Routing.DEEPSEEK_V2, n_group=n_group,
        topk_group=topk_group,
        routed_scaling=k.float("routed_scaling_factor", 1.0),
        # DeepSeek's gates renormalise only when top_k > 1 (transformers' do regardless)
        renormalize=k.bool("norm_topk_prob", v3) and top_k > 1,
        q_lora_rank=k.optional_int("q_lora_rank"), kv_lora_rank=k.int("kv_lora_rank"),
        qk_nope_dim=k.int("qk_nope_head_dim"), qk_rope_dim=rope_dim, v_head_dim=k.int("v_head_dim"),
        rope_theta=theta, rope_interleave=interleave, yarn=yarn)


def _check_quantization(k: _Keys) -> None:
    """FP8 as DeepSeek-V3 (and Qwen3's FP8 releases) store it: e4m3 weights, weight_scale_inv per 128x128 block.
    The decoder computes with the dequantized weights in the activation dtype."""
    q = k.h.get("quantization_config")
    if q is None:
        return
    if not isinstance(q, dict) or q.get("quant_method") != "fp8" or q.get("fmt", "e4m3") != "e4m3" \
            or list(q.get("weight_block_size", [128, 128])) != [128, 128]:
        raise k.refuse("quantization_config", q, "the decoder reads FP8 e4m3 weights with 128x128 block scales only",
                       "a BF16 checkpoint or DeepSeek-V3's FP8 format")


def _qwen3_moe(k: _Keys, common: dict) -> ModelConfig:
    layers, heads = common["layers"], common["heads"]
    experts = k.one_of("num_experts", "num_local_experts")
    kv_heads = k.int("num_key_value_heads", heads)
    if heads % kv_heads:
        raise k.refuse("num_key_value_heads", kv_heads, f"must divide num_attention_heads={heads}",
                       "use the checkpoint's own num_key_value_heads")
    head_dim = k.int("head_dim", common["hidden"] // heads)
    step = k.int("decoder_sparse_step", 1)
    only = k.get("mlp_only_layers", None)
    only = [] if only is None else only
    if not isinstance(only, list) or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < layers
                                         for i in only):
        raise k.refuse("mlp_only_layers", only, f"must list layer indices in [0, {layers})",
                       "use the checkpoint's own mlp_only_layers")
    # As Qwen3MoeDecoderLayer: MoE where the layer is not mlp-only and (index + 1) is a multiple of the step.
    dense = tuple(i for i in range(layers) if i in only or (i + 1) % step)
    if len(dense) == layers:
        raise k.refuse("mlp_only_layers", only, f"with decoder_sparse_step={step} no layer is MoE",
                       "a MoE checkpoint")
    if common["top_k"] > experts:
        raise k.refuse("num_experts_per_tok", common["top_k"], f"exceeds num_experts={experts}",
                       "use the checkpoint's own num_experts_per_tok")
    _check_quantization(k)
    theta, yarn = _rope(k, "qwen3_moe")
    return ModelConfig(
        **common, first_k_dense=0, mlp_only_layers=dense,
        dense_inter=k.int("intermediate_size") if dense else 0,
        num_experts=experts, shared_inter=0, attention="gqa", routing=Routing.SOFTMAX,
        renormalize=k.bool("norm_topk_prob", False), kv_heads=kv_heads, head_dim=head_dim, qk_norm=True,
        rope_theta=theta, yarn=yarn)
