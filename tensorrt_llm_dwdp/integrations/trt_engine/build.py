"""TensorRT engine flow: emit the DwdpMoe plugin in place of TensorRT-LLM's MixtureOfExperts plugin.

TensorRT-LLM's engine-flow MoE (`tensorrt_llm/layers/moe.py`, MixtureOfExperts: Mixtral, Qwen-MoE, Arctic,
DBRX...) routes inside the network: `forward(hidden_states, lora_layer_params, all_reduce_params,
last_local_layer_residual, side_stream_id, static_routing_input)` turns the fp32 router logits into top-k
expert ids (INT32) and scales (FP32) per `MoeConfig.normalization_mode`, then calls
`forward_experts(hidden_states, token_selected_experts, token_final_scales, lora_layer_params, side_stream_id)`,
the one place that emits the expert plugin. `patch_moe_class` wraps that method so each MoE layer, in build
order, emits DwdpMoe with precomputed routing (hidden states, ids, scales) while `--dwdp_group_size` asks for
DWDP; routing stays TensorRT-LLM's. The experts then come from the DWDP context the runtime registers under
`context_id` before the engine is deserialised, not from the engine.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass
from typing import Any, Dict, Optional

from ...config import DwdpConfigError

PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE = "DwdpMoe", "1", "dwdp"
PLUGIN_LIBRARY = "libdwdp_trt_plugin.so"
BUILD_FLAG = "--dwdp_group_size"


class Routing(enum.IntEnum):
    """The plugin's `routing` field (cpp/include/dwdp/moe_routing.h)."""

    SOFTMAX_TOPK = 0
    RENORMALIZE = 1
    PRECOMPUTED = 2


class ExpertDtype(enum.IntEnum):
    """The plugin's `dtype` field (cpp/include/dwdp/moe_layer.h)."""

    BF16 = 0
    FP8_BLOCK = 1


# The one hidden_act whose experts are DWDP's SwiGLU: layers/moe.py sizes fc as 2I only where
# is_gated_activation(hidden_act) (swiglu, geglu); "silu" builds a non-gated expert (fc out = I).
GATED_SWIGLU = "swiglu"


@dataclass(frozen=True)
class PluginFields:
    """The DwdpMoe fields of one layer, in the plugin's serialisation order."""

    layer_index: int
    num_experts: int
    hidden_size: int
    intermediate_size: int
    top_k: int
    routing: Routing
    dtype: ExpertDtype
    context_id: int

    def as_dict(self) -> Dict[str, int]:
        return {k: int(getattr(self, k)) for k in self.__dataclass_fields__}


def fields_for(moe, layer_index: int, context_id: int, dtype: ExpertDtype = ExpertDtype.BF16) -> PluginFields:
    """Fields for a TensorRT-LLM MixtureOfExperts module (attributes as layers/moe.py sets them; tests/contracts)."""
    if getattr(moe.mapping, "has_moe_tp", lambda: False)() or getattr(moe.mapping, "has_moe_ep", lambda: False)():
        raise DwdpConfigError("moe_tp_size/moe_ep_size", (moe.mapping.moe_tp_size, moe.mapping.moe_ep_size),
                              "DWDP runs every MoE layer whole on each rank", "build with moe_tp_size=1 moe_ep_size=1")
    if moe.hidden_act != GATED_SWIGLU:
        raise DwdpConfigError("hidden_act", moe.hidden_act, "the DWDP plugin computes gated SwiGLU experts "
                              "(hidden_act swiglu) only", "build this model without --dwdp_group_size")
    return PluginFields(layer_index, moe.num_experts, moe.hidden_size, moe.expert_inter_size, moe.moe_config.top_k,
                        Routing.PRECOMPUTED, dtype, context_id)


def emit_plugin(trt, network, hidden_states, routing, fields: PluginFields):
    """Adds one DwdpMoe layer to `network` (a trt.INetworkDefinition); returns its output ITensor.

    hidden_states [T, H] (or [B, S, H]) bf16; routing: ([.., K] int32 expert ids, [.., K] fp32 scales) for
    Routing.PRECOMPUTED, else one [.., E] fp32 logits tensor. All are TensorRT ITensors."""
    import numpy as np

    creator = trt.get_plugin_registry().get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE)
    if creator is None:
        raise RuntimeError(f"TensorRT has no {PLUGIN_NAME} plugin creator: load {PLUGIN_LIBRARY} with "
                           "trt.get_plugin_registry().load_library(...) first")
    pfc = trt.PluginFieldCollection([trt.PluginField(name, np.array([value], dtype=np.int32),
                                                     trt.PluginFieldType.INT32)
                                     for name, value in fields.as_dict().items()])
    plugin = creator.create_plugin(f"dwdp_moe_{fields.layer_index}", pfc, trt.TensorRTPhase.BUILD)
    inputs = [hidden_states, *routing] if isinstance(routing, (tuple, list)) else [hidden_states, routing]
    layer = network.add_plugin_v3(inputs, [], plugin)
    return layer.get_output(0)


@dataclass
class EngineFlowOptions:
    """What the build flag asked for; context_id ties the engine to the runtime's DWDP context."""

    group_size: int
    context_id: int = 0
    dtype: ExpertDtype = ExpertDtype.BF16


def patch_moe_class(moe_cls, options: EngineFlowOptions, *, trt=None, network_of=None) -> None:
    """Wraps moe_cls.forward_experts so each call (one per MoE layer, in build order) emits DwdpMoe.

    trt / network_of(module) default to TensorRT and TensorRT-LLM's default_trtnet(); tests pass fakes.
    Layers are numbered per network, so two engines built in one process each start at 0."""
    original = moe_cls.forward_experts
    if getattr(original, "_dwdp_wrapped", False):
        return
    counters: Dict[int, Any] = {}

    def forward_experts(self, hidden_states, token_selected_experts, token_final_scales, lora_layer_params,
                        side_stream_id):
        if lora_layer_params is not None:
            raise DwdpConfigError(BUILD_FLAG, options.group_size, "the DWDP plugin has no LoRA input",
                                  "build without LoRA or without --dwdp_group_size")
        if getattr(side_stream_id, "name", "disable") != "disable":
            # NOTE: with a side stream upstream's forward unpacks (output, sync tensors) from this call.
            raise DwdpConfigError(BUILD_FLAG, options.group_size, f"the MoE runs on a side stream "
                                  f"({side_stream_id}), which the DWDP plugin does not support",
                                  "build without the MoE side stream or without --dwdp_group_size")
        if token_final_scales is None:  # static routing: upstream passes no scales
            raise DwdpConfigError(BUILD_FLAG, options.group_size, "this MoE routes statically (no top-k "
                                  "scales)", "build this model without --dwdp_group_size")
        _trt = trt
        if _trt is None:
            import tensorrt as _trt
        if network_of is None:
            from tensorrt_llm._common import default_trtnet
            net = default_trtnet()
        else:
            net = network_of(self)
        layer = next(counters.setdefault(id(net), itertools.count()))
        fields = fields_for(self, layer, options.context_id, options.dtype)
        ids = _as_int32(_trt, net, _raw(token_selected_experts))
        out = emit_plugin(_trt, net, _raw(hidden_states), (ids, _raw(token_final_scales)), fields)
        return _wrap(out, hidden_states)

    forward_experts._dwdp_wrapped = True
    forward_experts._dwdp_original = original
    moe_cls.forward_experts = forward_experts


def _as_int32(trt, net, ids):
    """TensorRT's topk returns INT32 indices; a cast layer only where another type arrives."""
    dtype = getattr(ids, "dtype", None)
    if dtype is None or dtype == trt.int32:
        return ids
    return net.add_cast(ids, trt.int32).get_output(0)


def _raw(t):
    """A TensorRT-LLM Tensor's ITensor (or the object itself where it already is one)."""
    return getattr(t, "trt_tensor", t)


def _wrap(itensor, like):
    """The output as TensorRT-LLM's Tensor type where the input was one."""
    if hasattr(like, "trt_tensor"):
        from tensorrt_llm.functional import _create_tensor
        return _create_tensor(itensor, None)
    return itensor


def add_build_flag(parser) -> None:
    """Adds --dwdp_group_size to trtllm-build's argparse parser (TensorRT-LLM's commands/build.py)."""
    parser.add_argument(BUILD_FLAG, type=int, default=0,
                        help="DWDP group size: emit the DwdpMoe plugin for every MoE layer (0: off)")


def options_from_args(args) -> Optional[EngineFlowOptions]:
    size = int(getattr(args, BUILD_FLAG.lstrip("-"), 0) or 0)
    if size < 0:
        raise DwdpConfigError(BUILD_FLAG, size, "a group size is positive", "pass the number of GPUs in a DWDP group")
    return EngineFlowOptions(size) if size > 1 else None


def plugin_library_path() -> str:
    from pathlib import Path
    return str(Path(__file__).resolve().parents[2] / PLUGIN_LIBRARY)


# Written next to the engine by a DWDP build: what the runtime needs to set the context up before deserialising.
ENGINE_MARKER = "dwdp_engine.json"


def patch_build_command(module, *, load_plugin=None, moe_class=None) -> None:
    """trtllm-build (tensorrt_llm.commands.build, 1.2.x): `parse_arguments()` returns the argparse parser that
    `main()` parses. Wrapped so the parser has --dwdp_group_size and, when the flag asks for DWDP, parsing loads
    the plugin library, switches every MixtureOfExperts layer to DwdpMoe and records ENGINE_MARKER in
    --output_dir (group size, context id, the checkpoint the shards come from). load_plugin / moe_class default
    to TensorRT's registry and tensorrt_llm.layers.moe.MixtureOfExperts; tests pass fakes."""
    original = module.parse_arguments
    if getattr(original, "_dwdp_wrapped", False):
        return

    def parse_arguments(*args, **kwargs):
        parser = original(*args, **kwargs)
        add_build_flag(parser)
        parse = parser.parse_args

        def parse_args(*a, **kw):
            parsed = parse(*a, **kw)
            options = options_from_args(parsed)
            if options is not None:
                switch_on(options, parsed, load_plugin=load_plugin, moe_class=moe_class)
            return parsed

        parser.parse_args = parse_args
        return parser

    parse_arguments._dwdp_wrapped = True
    module.parse_arguments = parse_arguments


def switch_on(options: EngineFlowOptions, args, *, load_plugin=None, moe_class=None) -> None:
    """Make this build emit DwdpMoe: refuse what the plugin cannot do, load the library, patch the MoE class."""
    import json
    import os

    if int(getattr(args, "workers", 1) or 1) > 1:
        raise DwdpConfigError("--workers", args.workers, "DWDP engines are built in the process that parsed "
                              f"{BUILD_FLAG} (worker processes would build TensorRT-LLM's MoE plugin)",
                              "build with --workers 1")
    (load_plugin or load_plugin_library)(plugin_library_path())
    if moe_class is None:
        from tensorrt_llm.layers.moe import MixtureOfExperts as moe_class
    patch_moe_class(moe_class, options)
    out = getattr(args, "output_dir", None) or "."
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, ENGINE_MARKER), "w") as f:
        json.dump({"group_size": options.group_size, "context_id": options.context_id,
                   "dtype": options.dtype.name, "checkpoint_dir": os.path.abspath(args.checkpoint_dir)
                   if getattr(args, "checkpoint_dir", None) else None}, f, indent=1)


def load_plugin_library(path: str) -> None:
    """Registers DwdpMoe's creator with TensorRT's plugin registry (the library's getCreators entry)."""
    import tensorrt as trt
    trt.get_plugin_registry().load_library(path)
