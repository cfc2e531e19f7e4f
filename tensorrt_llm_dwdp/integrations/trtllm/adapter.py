"""TensorRT-LLM PyTorch backend -> DwdpHooks. Thin: placement, memory, pulls and expert math live
below the hook API; this file finds the MoE layers (discover.py), fills the shards from their
weights (layouts.py) and routes their forward through the hooks.

One TensorRT-LLM instance with attention DP and moe_expert_parallel_size = G is one DWDP group: the
experts TensorRT-LLM loads on expert-parallel rank r are rank r's shard, and every rank computes all
experts for its own tokens, pulling the others' from its peers; the MoE all-to-all is gone.

TensorRT-LLM interfaces touched (read at the 1.2 line and at main, 1.3 cycle):
  * _torch.pyexecutor.model_engine.PyTorchModelEngine.__init__ (builds and loads self.model):
    wrapped; after it returns the model is attached, collectively over the instance's ranks.
  * engine.forward: PyExecutor._forward_step and the warm-up call self.model_engine.forward; set
    per instance to bracket each step with begin_step / end_step.
  * MoE module forward(x, router_logits, *, do_finalize, output_dtype, all_rank_num_tokens,
    use_dp_padding, ...): replaced per instance; routing_method.apply(router_logits) ->
    (token_selected_experts int32 [T, K], token_final_scales fp32 [T, K]).
  * llmapi.llm_args / llm_utils.update_llm_args_with_extra_dict(llm_args, extra, ...): wrapped to
    drop the `dwdp` key before LlmArgs (extra="forbid") sees it.
  * _utils.mpi_comm(): the instance's communicator (set_mpi_comm in the disaggregated worker).
  * main only: llm_args.DwdpConfig (`dwdp_config`), upstream's own DWDP; detected and named.
"""

from __future__ import annotations

import atexit
import functools
import sys
from typing import Callable, List, Optional

import torch

from ...config import DwdpConfigError
from ...hooks import DwdpHooks, MoeShape
from ...moe import expert_compute
from ...placement import placement_from_config
from .activate import clear_hooks, when_imported
from .discover import MoeLayer, describe, find_moe_layers
from .layouts import module_weight_loader, restore_module_tensor, split_to_module, stage_to_host
from .options import SECTION, TrtllmDwdpOptions

UPSTREAM_NOTE = ("this TensorRT-LLM has its own DWDP (`dwdp_config`: NVFP4 experts, CUTEDSL backend, Blackwell). "
                 "Enable exactly one: `dwdp_config` for that case; the `dwdp:` section (tensorrt_llm_dwdp) for BF16 "
                 "or FP8 block-scaled experts on the CUTLASS, DEEPGEMM or TRITON backends, Hopper or Blackwell")


class _State:
    def __init__(self):
        self.options: Optional[TrtllmDwdpOptions] = None
        self.hooks: Optional[DwdpHooks] = None
        self.layers: List[MoeLayer] = []
        self.engine = None
        self.freed: List[tuple] = []
        self.undo: List[Callable[[], None]] = []
        self.exit_registered = False
        self.step: Optional[str] = None  # "engine": inside engine.forward; "implicit": opened by a MoE layer


_state = _State()


def _log(msg: str) -> None:
    print(f"[tensorrt_llm_dwdp] {msg}", file=sys.stderr, flush=True)


def install(options: TrtllmDwdpOptions) -> None:
    """Patch TensorRT-LLM's modules as they are imported (now, where they already are). Idempotent."""
    if _state.options is not None:
        return
    _state.options = options
    when_imported("tensorrt_llm", lambda m: _log(f"DWDP adapter active for TensorRT-LLM "
                                                 f"{getattr(m, '__version__', '?')} (options: {options.source})"))
    for name in ("tensorrt_llm.llmapi.llm_args", "tensorrt_llm.llmapi.llm_utils"):
        when_imported(name, _strip_dwdp_key)
    when_imported("tensorrt_llm._torch.pyexecutor.model_engine", _patch_engine)
    if not _state.exit_registered:
        _state.exit_registered = True
        atexit.register(_close_at_exit)


def _set(obj, name: str, value) -> None:
    """setattr, undone by uninstall(): the old value back, or the attribute gone if it was inherited."""
    own, old = name in vars(obj), vars(obj).get(name)
    setattr(obj, name, value)
    _state.undo.append(lambda: setattr(obj, name, old) if own else delattr(obj, name))


def _strip_dwdp_key(module) -> None:
    if hasattr(module, "DwdpConfig"):
        _log("note: " + UPSTREAM_NOTE)
    fn = getattr(module, "update_llm_args_with_extra_dict", None)
    if fn is None:
        return
    if getattr(fn, "_dwdp_strips", False):  # imported by name from a module patched before (llm_utils at 1.2)
        _state.undo.append(lambda: setattr(module, "update_llm_args_with_extra_dict", fn.__wrapped__))
        return

    @functools.wraps(fn)
    def update(llm_args, llm_args_dict, *args, **kwargs):
        if isinstance(llm_args_dict, dict) and SECTION in llm_args_dict:
            llm_args_dict = {k: v for k, v in llm_args_dict.items() if k != SECTION}
        return fn(llm_args, llm_args_dict, *args, **kwargs)

    update._dwdp_strips = True
    _set(module, "update_llm_args_with_extra_dict", update)


def _patch_engine(module) -> None:
    cls = getattr(module, "PyTorchModelEngine", None)
    if cls is None:
        _log("warning: this TensorRT-LLM has no PyTorchModelEngine; DWDP is not attached")
        return
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        attach(self, _state.options)

    _set(cls, "__init__", __init__)


def attach(engine, options: TrtllmDwdpOptions, comm=None, device=None, free_module_weights: bool = True):
    """Move a loaded model's MoE layers onto DWDP. Collective over the instance's ranks (comm,
    default tensorrt_llm._utils.mpi_comm()). Returns the hooks, or None where DWDP stays off."""
    if getattr(engine, "is_draft_model", False) or _state.hooks is not None:
        return None
    model = engine.model
    limit = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    layers = [describe(*t) for t in find_moe_layers(model, limit)]
    if not layers:
        routed = [m for m in model.modules() if hasattr(m, "routing_method")
                  and isinstance(getattr(m, "layer_idx", None), int) and (limit is None or m.layer_idx < limit)]
        if routed:  # MoE layers whose experts are not where this adapter reads them
            raise DwdpConfigError("moe_config.backend", type(routed[0]).__name__, "its experts are not in a "
                                  "w3_w1_weight tensor DWDP reads", "use CUTLASS, DEEPGEMM (Hopper) or TRITON")
        return None
    first = layers[0]
    m = first.module
    kinds = {(x.layout, x.weight_dtype, x.module.num_experts, tuple(x.holder.w3_w1_weight.shape)) for x in layers}
    if len(kinds) > 1:
        raise DwdpConfigError("model", "mixed MoE layers", f"layers differ in backend, dtype or shape: {kinds}",
                              "serve this model without DWDP")
    ep_size, ep_rank = getattr(m, "ep_size", 1), getattr(m, "ep_rank", 0)
    config = options.config(num_experts=m.num_experts, group_size=ep_size, weight_dtype=first.weight_dtype)
    if config.group_size != ep_size:
        raise DwdpConfigError("dwdp.group_size", config.group_size, f"TensorRT-LLM spreads the experts over "
                              f"moe_expert_parallel_size={ep_size} ranks", f"set group_size: {ep_size} or leave it out")
    per_rank = len(first.local_ids)
    placement = placement_from_config(config)
    for r, owned in enumerate(placement.ranks):
        if not set(owned) <= set(range(r * per_rank, (r + 1) * per_rank)):
            raise DwdpConfigError("dwdp.placement", options.fields.get("placement", "derived"), f"rank {r} would "
                                  f"own experts TensorRT-LLM loads on other ranks ({list(owned)[:6]}...)",
                                  "leave placement and experts_per_rank out")
    if not _wanted(engine, options, config, first.weight_dtype):
        return None
    comm = comm if comm is not None else _trtllm_comm()
    if comm.Get_rank() % config.group_size != ep_rank:
        raise DwdpConfigError("dwdp.group_size", config.group_size, f"communicator rank {comm.Get_rank()} is not "
                              f"expert-parallel rank {ep_rank}", "run one DWDP group per TensorRT-LLM instance")
    inter = getattr(m, "intermediate_size_per_partition", m.intermediate_size)
    shape = MoeShape(len(layers), m.hidden_size, inter, m.num_experts, tuple(x.layer_idx for x in layers))
    loader = module_weight_loader([x.holder for x in layers], first.layout, [x.local_ids for x in layers])
    device = device if device is not None else first.holder.w3_w1_weight.device
    # NOTE: the shard is allocated whole before it is filled; staging the module's copy in host memory
    # first keeps the device from holding the local experts twice.
    staged = [(x, *rec) for x in layers for rec in stage_to_host(x.holder)] if free_module_weights else []
    try:
        hooks = DwdpHooks.setup(config, shape, loader, comm=comm, device=device)
    except BaseException:
        for _, _, p, _, _, dev in staged:
            p.data = p.data.to(dev)
        raise
    for rec in staged:
        rec[2].data = rec[2].data.new_empty(0)
    _state.hooks, _state.layers, _state.engine, _state.freed = hooks, layers, engine, staged
    for layer in layers:
        layer.module.forward = functools.partial(_moe_forward, layer.module, hooks)
    engine.forward = _bracket(engine.forward, hooks)
    _log(f"DWDP on {len(layers)} MoE layers: group rank {hooks.group.rank}/{config.group_size}, local experts "
         f"{hooks.local_experts[0]}..{hooks.local_experts[-1]}, {first.weight_dtype}, {first.layout} layout")
    return hooks


def _wanted(engine, options: TrtllmDwdpOptions, config, weight_dtype: str) -> bool:
    """mode auto: the performance model decides; mode dwdp: on, with its warning if it cannot pay."""
    try:
        from ...runtime.auto import choose
        from ...runtime.checkpoint import config_from_hf
        args = getattr(engine, "llm_args", None)
        path = str(getattr(engine, "model_path", None) or getattr(args, "model", ""))
        tokens = int(getattr(engine, "max_num_tokens", None) or getattr(args, "max_num_tokens", None) or 8192)
        d = choose(config_from_hf(path), config.group_size, options.isl or str(tokens), tokens, options.mode,
                   options.machine, "fp8" if weight_dtype.startswith("float8") else "bf16")
    except Exception as e:  # noqa: BLE001 - no prediction must not stop a deployment asking for DWDP
        _log(f"no performance prediction ({type(e).__name__}: {e})" +
             ("; mode auto leaves DWDP off" if options.mode == "auto" else ""))
        return options.mode != "auto"
    if options.mode == "auto":
        _log(f"mode auto chose {d.mode.upper()}: {d.reason}")
        return d.mode == "dwdp"
    if d.warning:
        _log("warning: " + d.warning)
    return True


def _trtllm_comm():
    try:
        from tensorrt_llm._utils import mpi_comm
        return mpi_comm()
    except ImportError:
        from mpi4py import MPI
        return MPI.COMM_WORLD


def _moe_forward(module, hooks: DwdpHooks, x, router_logits, *args, do_finalize: bool = True, output_dtype=None,
                 **kwargs):
    """The MoE layer through DWDP: route, wait for this layer's pull, experts in place, release."""
    if not do_finalize:
        raise RuntimeError("DWDP MoE layers always finalize; do_finalize=False (TRTLLM-Gen fusion) is unsupported")
    if not torch.is_tensor(x):
        raise RuntimeError(f"DWDP MoE layers take unquantized activations, got {type(x).__name__}")
    if x.is_cuda and torch.cuda.is_current_stream_capturing():
        raise DwdpConfigError("cuda_graph_config", "enabled", "DWDP MoE layers wait on prefetch events and are "
                              "not captured in CUDA graphs", "set cuda_graph_config: null on DWDP servers")
    if _state.step is None:  # a model forward outside engine.forward (a warm-up or autotuner pass): a step of its own
        hooks.begin_step()
        _state.step = "implicit"
    ids, scales = module.routing_method.apply(router_logits)
    weights = hooks.layer_weights(module.layer_idx)
    y = expert_compute(x, ids.long(), scales, weights)
    hooks.layer_done(module.layer_idx)
    if _state.step == "implicit" and module.layer_idx == _state.layers[-1].layer_idx:
        hooks.end_step()
        _state.step = None
    return y if output_dtype is None else y.to(output_dtype)


def _bracket(forward, hooks: DwdpHooks):
    @functools.wraps(forward)
    def run(*args, **kwargs):
        hooks.begin_step()
        _state.step = "engine"
        out = forward(*args, **kwargs)
        hooks.end_step()
        _state.step = None
        return out
    return run


def _restore_freed(hooks: DwdpHooks) -> None:
    """Copy each module's experts back from the shard, in TensorRT-LLM's layout and strides."""
    hooks.begin_step()
    for layer in _state.layers:
        back = split_to_module(hooks.layer_weights(layer.layer_idx), layer.layout, layer.local_ids)
        for rec in (r for r in _state.freed if r[0] is layer):
            restore_module_tensor(rec[1:], back)
        hooks.layer_done(layer.layer_idx)
    hooks.end_step()


def detach() -> None:
    """Give the attached model its weights and TensorRT-LLM's forward back; close the hooks (collective)."""
    hooks, _state.hooks = _state.hooks, None
    if hooks is None:
        return
    try:
        if _state.freed:
            _restore_freed(hooks)
        for layer in _state.layers:
            vars(layer.module).pop("forward", None)
        vars(_state.engine).pop("forward", None)
    finally:
        _state.layers, _state.freed, _state.engine, _state.step = [], [], None, None
        hooks.close()


def uninstall() -> None:
    """Undo everything install() and attach() did in this process."""
    detach()
    clear_hooks()
    while _state.undo:
        _state.undo.pop()()
    _state.options = None


def _close_at_exit() -> None:
    hooks, _state.hooks = _state.hooks, None
    try:
        hooks is not None and hooks.close(timeout_s=60.0)
    except Exception as e:  # noqa: BLE001 - exiting anyway
        _log(f"closing DWDP at exit: {type(e).__name__}: {e}")
