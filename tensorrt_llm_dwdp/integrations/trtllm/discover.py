"""TensorRT-LLM's MoE layers as DWDP sees them: which modules, which weight layout, and whether
DWDP can serve them (a DwdpConfigError naming the option to change where it cannot).

TensorRT-LLM attributes read (MoE interface and ConfigurableMoE, 1.2 line and main): layer_idx,
routing_method, num_experts, hidden_size, intermediate_size(_per_partition), ep_size, ep_rank,
tp_size, cluster_size, use_dp, initial_local_expert_ids, layer_load_balancer, comm (ConfigurableMoE's token
exchange, chosen at construction; configurable.py leaves it out for DWDP layers, one still set is refused),
enable_alltoall, apply_router_weight_on_input,
bias, swiglu_alpha/beta/limit, activation_type (a plain int: MoE.__init__ stores int(activation_type); Swiglu only) and
swiglu_limit_scalar (main: Gemma4 and gpt-oss), activation (newer main: SwigluActivation(clamp=None) only), quant_method (its class name tells DeepGEMM's FP8
method, which CUTLASS also selects on Blackwell), enable_dwdp (main: upstream's own DWDP), and
ConfigurableMoE.backend, the module that holds the tensors named in layouts.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import torch

from ...config import DwdpConfigError, WeightDtype
from .layouts import Layout

# Backend class -> the layout its tensors are in (layouts.py), None where its own kernels cannot read DWDP's
# composite [E, 2I, H] tensors (TRITON: [E, H, 2I], gate/up columns interleaved). The holder's most specific
# class in this table decides: CuteDslFusedMoE subclasses CutlassFusedMoE at 1.2.
BACKENDS = {"CutlassFusedMoE": Layout.W3_W1, "DeepGemmFusedMoE": Layout.W3_W1, "WideEPMoE": Layout.W3_W1,
            "TritonFusedMoE": None, "CuteDslFusedMoE": None, "TRTLLMGenFusedMoE": None,
            "DenseGEMMFusedMoE": None, "VanillaMoE": None}
# FP8 block-scale methods whose scales are resmoothed to UE8M0 and packed for DeepGEMM's kernels.
DEEPGEMM_FP8_METHODS = ("DeepSeekFP8BlockScalesFusedMoEMethodDeepGemm",)
# ActivationType's values (TensorRT-LLM's _torch ActivationType mirrors the CUTLASS MoE kernels' C++ enum, whose
# order the kernels depend on). MoE.__init__ keeps int(activation_type), so the adapter reads the number.
ACTIVATIONS = ("InvalidType", "Identity", "Gelu", "Relu", "Silu", "Swiglu", "Geglu", "SwigluBias", "Relu2")
SWIGLU = ACTIVATIONS.index("Swiglu")
_FLOAT_DTYPES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


@dataclass(frozen=True)
class MoeLayer:
    """One TensorRT-LLM MoE layer; holder is the module that owns the tensors."""

    layer_idx: int
    module: Any
    holder: Any
    layout: Layout
    weight_dtype: str
    local_ids: Tuple[int, ...]


def find_moe_layers(model, num_hidden_layers: Optional[int] = None) -> List[Tuple[int, Any, Any]]:
    """(layer_idx, module, holder) of the decoder's MoE layers, in layer order. A ConfigurableMoE
    and its backend count once; layers at or past num_hidden_layers (MTP) keep TensorRT-LLM's path."""
    found, backends = [], set()
    for _, m in model.named_modules():
        if not hasattr(m, "routing_method") or getattr(m, "layer_idx", None) is None:
            continue
        backend = getattr(m, "backend", None)
        holder = backend if backend is not None and hasattr(backend, "w3_w1_weight") else m
        if not hasattr(holder, "w3_w1_weight"):
            continue
        if holder is not m:
            backends.add(id(holder))
        found.append((int(m.layer_idx), m, holder))
    layers = [t for t in found if id(t[1]) not in backends]
    if num_hidden_layers is not None:
        layers = [t for t in layers if t[0] < num_hidden_layers]
    return sorted(layers, key=lambda t: t[0])


def describe(layer_idx: int, m, holder) -> MoeLayer:
    """Check that DWDP can serve this layer; raise DwdpConfigError naming the option otherwise."""
    where = f"MoE layer {layer_idx} ({type(holder).__name__})"
    if getattr(m, "enable_dwdp", False):
        raise DwdpConfigError("dwdp_config", "enabled", f"TensorRT-LLM's own DWDP already runs {where}",
                              "enable one DWDP: remove dwdp_config, or the dwdp: section")
    layout = next((BACKENDS[c.__name__] for c in type(holder).__mro__ if c.__name__ in BACKENDS), None)
    if layout is None:
        raise DwdpConfigError("moe_config.backend", type(holder).__name__,
                              f"{where}: this backend keeps experts in a layout DWDP does not read",
                              "use CUTLASS; for NVFP4 on CUTEDSL use dwdp_config")
    if getattr(m, "layer_load_balancer", None) is not None:
        raise DwdpConfigError("moe_config.load_balancer", "set", f"{where}: EPLB moves experts at run time, "
                              "DWDP shards are fixed at start", "remove moe_config.load_balancer")
    if getattr(m, "comm", None) is not None:
        # NOTE: ConfigurableMoE picks its exchange once, at construction (1.2: end of __init__; main: when the backend
        # is bound). The adapter leaves it out for DWDP layers only when it is installed before the model is built.
        raise DwdpConfigError("moe_config.backend", type(m).__name__, f"{where}: its token exchange "
                              f"({type(m.comm).__name__}) was built with the model, before DWDP was installed",
                              "start the server with TRTLLM_DWDP or TRTLLM_DWDP_OPTIONS set (trtllm-dwdp launch "
                              "does), so the adapter is installed before TensorRT-LLM builds the model")
    if getattr(holder, "enable_alltoall", False):
        raise DwdpConfigError("moe_config.backend", type(holder).__name__, f"{where}: it runs an expert-parallel "
                              "all-to-all chosen at construction; DWDP cannot turn it off safely",
                              "disable the MoE all-to-all (TRTLLM_FORCE_ALLTOALL_METHOD unset) or serve without DWDP")
    if getattr(holder, "cluster_size", 1) != 1:
        raise DwdpConfigError("moe_cluster_parallel_size", holder.cluster_size, "the fused MoE op splits experts "
                              "over the cluster ranks, and DWDP serves every expert whole on each rank",
                              "set moe_cluster_parallel_size: 1")
    if getattr(m, "tp_size", 1) != 1:
        raise DwdpConfigError("moe_tensor_parallel_size", m.tp_size, "DWDP shards whole experts",
                              "set moe_tensor_parallel_size: 1 and moe_expert_parallel_size to the DWDP group")
    if getattr(m, "ep_size", 1) > 1 and not getattr(m, "use_dp", False):
        raise DwdpConfigError("enable_attention_dp", False, "with tensor-parallel attention every rank has the "
                              "same tokens and TensorRT-LLM sums the MoE outputs across ranks",
                              "set enable_attention_dp: true")
    if getattr(m, "apply_router_weight_on_input", False) or getattr(holder, "bias", False) or any(
            getattr(holder, a, None) is not None for a in ("swiglu_alpha", "swiglu_beta", "swiglu_limit")):
        raise DwdpConfigError("model", where, "expert biases, router weights on the input or a SwiGLU variant "
                              "are not in DWDP's expert math (plain SwiGLU)", "serve this model without DWDP")
    for owner in (m, holder):
        act = getattr(owner, "activation_type", None)
        if act is not None and int(act) != SWIGLU:
            name = ACTIVATIONS[int(act)] if 0 <= int(act) < len(ACTIVATIONS) else f"#{int(act)}"
            raise DwdpConfigError("model", where, f"its experts use activation {name}; DWDP's "
                                  "expert math is SwiGLU", "serve this model without DWDP")
        kind = getattr(owner, "activation", None)  # newer main: a MoEActivation object (fused_moe/activation.py)
        if kind is not None and (type(kind).__name__ != "SwigluActivation" or getattr(kind, "clamp", None) is not None):
            clamp = getattr(kind, "clamp", None)
            raise DwdpConfigError("model", where, f"its experts use {type(kind).__name__}"
                                  f"{f'(clamp={clamp})' if clamp is not None else ''}; DWDP's expert math is plain "
                                  "SwiGLU", "serve this model without DWDP")
        if getattr(owner, "swiglu_limit_scalar", None) is not None:
            raise DwdpConfigError("model", where, f"its SwiGLU is clamped (swiglu_limit_scalar="
                                  f"{owner.swiglu_limit_scalar}); DWDP's expert math is plain SwiGLU",
                                  "serve this model without DWDP")
    w = holder.w3_w1_weight
    n, hidden, inter = w.shape[0], m.hidden_size, getattr(m, "intermediate_size_per_partition", m.intermediate_size)
    want = (2 * inter, hidden) if layout is Layout.W3_W1 else (hidden, 2 * inter)
    if tuple(w.shape[1:]) != want:
        raise DwdpConfigError("model", where, f"w3_w1_weight is {tuple(w.shape)}, expected [n, {want[0]}, {want[1]}]",
                              "check the model's hidden and intermediate sizes")
    scale = getattr(holder, "w3_w1_weight_scaling_factor", None)
    if w.dtype in _FLOAT_DTYPES and scale is None:
        dtype = _FLOAT_DTYPES[w.dtype]
    elif w.dtype == torch.float8_e4m3fn and scale is not None and layout is Layout.W3_W1:
        blocks = (n, 2 * -(-inter // 128), -(-hidden // 128))
        method = type(getattr(holder, "quant_method", None)).__name__
        if method in DEEPGEMM_FP8_METHODS or tuple(scale.shape) != blocks or scale.dtype != torch.float32:
            # NOTE: on Blackwell TensorRT-LLM picks DeepGEMM's FP8 method in the CUTLASS backend too, so
            # no backend choice keeps the 128x128 fp32 scales there.
            raise DwdpConfigError("quant_config", "FP8 block scales", f"{where}: {method} holds the scales as "
                                  f"{tuple(scale.shape)} {scale.dtype} (resmoothed to UE8M0 and packed for DeepGEMM, "
                                  f"which every backend uses on Blackwell), not the 128x128 fp32 blocks {blocks} "
                                  "DWDP serves", "on Blackwell serve BF16 experts, or NVFP4 with dwdp_config "
                                  "(CUTEDSL); FP8 block-scaled experts are served on Hopper")
        dtype = WeightDtype.FP8.value
    else:
        raise DwdpConfigError("quant_config", str(w.dtype), f"{where}: DWDP serves BF16/FP16 experts and FP8 "
                              "experts with 128x128 block scales", "use one of those checkpoints")
    ep_rank = getattr(m, "ep_rank", 0)
    ids = getattr(m, "initial_local_expert_ids", None)
    ids = tuple(int(e) for e in (ids if ids is not None else range(ep_rank * n, ep_rank * n + n)))
    if len(ids) != n:
        raise DwdpConfigError("model", where, f"{n} experts loaded but {len(ids)} expert ids", "report this")
    return MoeLayer(layer_idx, m, holder, layout, dtype, ids)
