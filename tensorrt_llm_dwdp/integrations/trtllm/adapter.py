"""TensorRT-LLM PyTorch backend -> DwdpHooks. Thin: placement, memory, pulls and expert math live
below the hook API; this file finds the MoE layers (discover.py), fills the shards from their
weights (layouts.py) and points the modules at the hooks' composite tensors.

One TensorRT-LLM instance with attention DP and moe_expert_parallel_size = G is one DWDP group: the
experts TensorRT-LLM loads on expert-parallel rank r are rank r's shard, and every rank computes all
experts for its own tokens, pulling the others' from its peers; the MoE all-to-all is gone.

The MoE modules keep their own forward and kernels (CUTLASS fused MoE, DeepGEMM). DWDP changes
  * where their expert tensors live: before each MoE layer runs, w3_w1_weight, w2_weight and the FP8
    w3_w1_weight_scaling_factor / w2_weight_scaling_factor (Parameter .data) become the hooks' composite
    [E, ...] tensors of this step (scales replicated), in TensorRT-LLM's own layout: the shard is filled
    with the tensors as stored (MoeShape.w13_order = UP_GATE), so nothing is converted per step;
  * what they believe they hold: every expert local, no expert-parallel exchange (partition.py);
  * and each step and MoE layer is bracketed by the hooks' step protocol (steps.py).

ConfigurableMoE (the 1.2 line's default, main's only wrapper) is built without a token exchange for the layers
DWDP serves (configurable.py), as upstream's own DWDP does on main. Refused (DwdpConfigError) where this cannot be
made safe: a ConfigurableMoE whose exchange was built before the adapter was installed; a backend with
enable_alltoall; the TRITON backend (its weights are [E, H, 2I] with gate/up columns interleaved, not the
composite layout); a partition whose boundaries would pad the expert stride (the fused kernels assume contiguous
experts; refused at setup, before anything is allocated).

TensorRT-LLM interfaces touched (read at the 1.2 line and at main; tests/contracts has the files and commits):
  * _torch.pyexecutor.model_engine.PyTorchModelEngine.__init__ (builds and loads self.model):
    wrapped; after it returns the model is attached, collectively over the instance's ranks.
  * engine.forward and each MoE module's forward: wrapped per instance (steps.py), never replaced.
  * engine._torch_compile_enabled and torch.compile's OptimizedModule in the model: TensorRT-LLM
    compiles `model.model` inside __init__, before attach; such a model is refused.
  * llmapi.mpi_session.MPIPoolExecutor (as MpiPoolSession._start_mpi_pool calls it, 1.2 and main):
    wrapped to pass TRTLLM_DWDP / TRTLLM_DWDP_OPTIONS to the spawned workers, which the pool does not
    do by itself.
  * llmapi.llm_args / llm_utils.update_llm_args_with_extra_dict(llm_args, extra, ...): wrapped to
    drop the `dwdp` key before LlmArgs (extra="forbid") sees it.
  * _utils.mpi_comm(): the instance's communicator (set_mpi_comm in the disaggregated worker).
  * ConfigurableMoE._create_comm_strategy_auto (configurable_moe.py, both package paths): wrapped (configurable.py).
  * main only: llm_args.DwdpConfig (`dwdp_config`), upstream's own DWDP; detected and named.
"""

from __future__ import annotations

import atexit
import functools
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional

import torch

from ...config import DwdpConfigError
from ...hooks import DwdpHooks, MoeShape
from ...layout import W13Order
from ...placement import placement_from_config
from . import configurable, predict
from .discover import MoeLayer, describe, find_moe_layers
from .import_hooks import clear_hooks, when_imported
from .layouts import (TRTLLM_NAMES, StagedTensor, restore_module_tensor, stage_to_host, stored_rows,
                      stored_weight_loader)
from .log import log
from .options import ENV_FILE, ENV_INLINE, SECTION, TrtllmDwdpOptions
from .partition import make_all_local
from .steps import StepState, Steps

UPSTREAM_NOTE = ("this TensorRT-LLM has its own DWDP (`dwdp_config`: NVFP4 experts, CUTEDSL backend, Blackwell). "
                 "Enable exactly one: `dwdp_config` for that case; the `dwdp:` section (tensorrt_llm_dwdp) for BF16 "
                 "experts, or FP8 block-scaled experts on Hopper, on the CUTLASS backend")


@dataclass(frozen=True)
class _Staged:
    layer: MoeLayer
    tensor: StagedTensor


@dataclass
class _Attached:
    hooks: DwdpHooks
    layers: List[MoeLayer]
    engine: Any
    staged: List[_Staged]
    kept: Dict[int, Dict[str, torch.Tensor]]  # layer_idx -> the module's own tensors, where not freed
    steps: Steps
    partition: List[Callable[[], None]] = field(default_factory=list)  # puts the modules' partition back


@dataclass
class _State:
    options: Optional[TrtllmDwdpOptions] = None
    attached: Optional[_Attached] = None
    undo: List[Callable[[], None]] = field(default_factory=list)
    exit_registered: bool = False


_state = _State()


def install(options: TrtllmDwdpOptions) -> None:
    """Patch TensorRT-LLM's modules as they are imported (now, where they already are). Idempotent."""
    if _state.options is not None:
        return
    _state.options = options
    when_imported("tensorrt_llm", lambda m: log(f"DWDP adapter active for TensorRT-LLM "
                                                 f"{getattr(m, '__version__', '?')} (options: {options.source})"))
    for name in ("tensorrt_llm.llmapi.llm_args", "tensorrt_llm.llmapi.llm_utils"):
        when_imported(name, _strip_dwdp_key)
    when_imported("tensorrt_llm.llmapi.mpi_session", _pass_env_to_workers)
    when_imported("tensorrt_llm._torch.pyexecutor.model_engine", _patch_engine)
    for name in configurable.MODULES:  # before any model is built: ConfigurableMoE picks its exchange then
        when_imported(name, lambda m: configurable.patch_class(m, _set))
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
        log("note: " + UPSTREAM_NOTE)
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


def _pass_env_to_workers(module) -> None:
    """MpiPoolSession spawns its workers (MPI_Comm_spawn) without this process's environment, so
    their .pth hook would not see the DWDP variables, and the launcher has already taken the
    `dwdp:` key out of the options file: hand the variables to the pool."""
    pool = getattr(module, "MPIPoolExecutor", None)
    if pool is None:
        log("warning: this TensorRT-LLM's mpi_session has no MPIPoolExecutor; spawned workers may not get DWDP")
        return

    @functools.wraps(pool)
    def executor(*args, **kwargs):
        env = dict(kwargs.pop("env", None) or {})
        for var in (ENV_FILE, ENV_INLINE):
            if var in os.environ:
                env.setdefault(var, os.environ[var])
        return pool(*args, env=env, **kwargs)

    _set(module, "MPIPoolExecutor", executor)


def _patch_engine(module) -> None:
    cls = getattr(module, "PyTorchModelEngine", None)
    if cls is None:
        raise DwdpConfigError(SECTION, "enabled", "this TensorRT-LLM has no PyTorchModelEngine to attach DWDP to",
                              "use TensorRT-LLM 1.2.x or main with the PyTorch backend, or remove the dwdp: section")
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        attach(self, _state.options)

    _set(cls, "__init__", __init__)


def _compiled(engine) -> bool:
    return bool(getattr(engine, "_torch_compile_enabled", False)) or any(
        type(m).__name__ == "OptimizedModule" for m in engine.model.modules())


def attach(engine, options: TrtllmDwdpOptions, comm=None, device=None, free_module_weights: bool = True):
    """Move a loaded model's MoE layers onto DWDP. Collective over the instance's ranks (comm,
    default tensorrt_llm._utils.mpi_comm()). Returns the hooks, or None where DWDP stays off (said
    on stderr); then ConfigurableMoE layers get the token exchange their construction left out."""
    hooks = _attach(engine, options, comm, device, free_module_weights)
    if hooks is None and configurable.restore_exchange(engine.model):
        log("DWDP is off for this model: its ConfigurableMoE layers got their token exchange back")
    return hooks


def _attach(engine, options: TrtllmDwdpOptions, comm, device, free_module_weights: bool):
    if getattr(engine, "is_draft_model", False):
        log("draft model: its MoE layers keep TensorRT-LLM's path")
        return None
    if _state.attached is not None:
        log("warning: DWDP is already attached to a model in this process; this one keeps TensorRT-LLM's path")
        return None
    model = engine.model
    limit = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    layers = [describe(*t) for t in find_moe_layers(model, limit)]
    if not layers:
        routed = [m for m in model.modules() if hasattr(m, "routing_method")
                  and (limit is None or not isinstance(getattr(m, "layer_idx", None), int) or m.layer_idx < limit)]
        if any(getattr(m, "layer_idx", None) is None for m in routed):
            raise DwdpConfigError("model", type(routed[0]).__name__, "its MoE modules have no layer_idx, which DWDP "
                                  "needs to order its pulls", "serve this model without DWDP")
        if routed:  # MoE layers whose experts are not where this adapter reads them
            raise DwdpConfigError("moe_config.backend", type(routed[0]).__name__, "its experts are not in a "
                                  "w3_w1_weight tensor DWDP reads", "use CUTLASS")
        log("warning: no MoE layers in this model; DWDP is off")
        return None
    if _compiled(engine):
        raise DwdpConfigError("torch_compile_config", "enabled", "TensorRT-LLM compiled the model before DWDP "
                              "attached, so Dynamo would trace DWDP's MoE layers and hooks",
                              "set torch_compile_config: null on DWDP servers (trtllm-dwdp launch does)")
    first = layers[0]
    m = first.module
    kinds = {(x.layout, x.weight_dtype, x.module.num_experts, tuple(x.holder.w3_w1_weight.shape), x.local_ids)
             for x in layers}
    if len(kinds) > 1:
        raise DwdpConfigError("model", "mixed MoE layers", f"layers differ in backend, dtype, shape or expert "
                              f"partition: {sorted(str(k[:4]) for k in kinds)}", "serve this model without DWDP")
    ep_size, ep_rank = getattr(m, "ep_size", 1), getattr(m, "ep_rank", 0)
    config = options.config(num_experts=m.num_experts, group_size=ep_size, weight_dtype=first.weight_dtype)
    if config.group_size != ep_size:
        raise DwdpConfigError("dwdp.group_size", config.group_size, f"TensorRT-LLM spreads the experts over "
                              f"moe_expert_parallel_size={ep_size} ranks", f"set group_size: {ep_size} or leave it out")
    comm = comm if comm is not None else _trtllm_comm()
    if comm.Get_rank() % config.group_size != ep_rank:
        raise DwdpConfigError("dwdp.group_size", config.group_size, f"communicator rank {comm.Get_rank()} is not "
                              f"expert-parallel rank {ep_rank}", "run one DWDP group per TensorRT-LLM instance")
    config = _placement_as_loaded(config, options, comm, first.local_ids)
    if not predict.wanted(engine, options, config.group_size, first.weight_dtype):
        return None
    inter = getattr(m, "intermediate_size_per_partition", m.intermediate_size)
    shape = MoeShape(len(layers), m.hidden_size, inter, m.num_experts, tuple(x.layer_idx for x in layers),
                     w13_order=W13Order.UP_GATE)
    loader = stored_weight_loader([x.holder for x in layers], [x.local_ids for x in layers])
    device = device if device is not None else first.holder.w3_w1_weight.device
    # NOTE: the shard is allocated whole before it is filled; staging the module's copy in host memory
    # first keeps the device from holding the local experts twice.
    staged = [_Staged(x, t) for x in layers for t in stage_to_host(x.holder)] if free_module_weights else []
    kept = {} if free_module_weights else {x.layer_idx: _param_data(x.holder) for x in layers}
    try:
        hooks = DwdpHooks.setup(config, shape, loader, comm=comm, device=device, contiguous=True)
    except BaseException:
        for rec in staged:
            rec.tensor.back_to_device()
        raise
    for rec in staged:
        rec.tensor.drop()
    steps = Steps(hooks, layers)
    _state.attached = _Attached(hooks, layers, engine, staged, kept, steps)
    for layer in layers:
        _state.attached.partition.extend(make_all_local(layer, m.num_experts))
        layer.module.forward = functools.partial(steps.moe_forward, layer, layer.module.forward)
    engine.forward = steps.bracket(engine.forward)
    log(f"DWDP on {len(layers)} MoE layers: group rank {hooks.group.rank}/{config.group_size}, local experts "
         f"{hooks.local_experts[0]}..{hooks.local_experts[-1]}, {first.weight_dtype}, {first.layout.value} layout, "
         f"{type(first.holder).__name__}'s own kernels")
    return hooks


def _param_data(holder) -> Dict[str, torch.Tensor]:
    return {n: getattr(holder, n).data for n in TRTLLM_NAMES if getattr(holder, n, None) is not None}


def _placement_as_loaded(config, options: TrtllmDwdpOptions, comm, local_ids) -> Any:
    """DWDP's placement is the partition TensorRT-LLM loaded (even or not: 1.2 splits evenly, main
    also ceil/floor); a placement the user gave must keep every rank within what it loaded."""
    config.resolved_num_groups(comm.Get_size())  # raises before the collective below, which needs whole groups
    g = config.group_size
    first = comm.Get_rank() // g * g
    loaded = [tuple(ids) for ids in comm.allgather(tuple(local_ids))][first: first + g]
    if "placement" not in options.fields and "experts_per_rank" not in options.fields:
        return replace(config, placement=tuple(loaded))
    for r, owned in enumerate(placement_from_config(config).ranks):
        if not set(owned) <= set(loaded[r]):
            raise DwdpConfigError("dwdp.placement", options.fields.get("placement", "derived"), f"rank {r} would "
                                  f"own experts TensorRT-LLM loads on other ranks ({list(owned)[:6]}...)",
                                  "leave placement and experts_per_rank out")
    return config


def _trtllm_comm():
    try:
        from tensorrt_llm._utils import mpi_comm
        return mpi_comm()
    except ImportError:
        from mpi4py import MPI
        return MPI.COMM_WORLD


def _restore_freed(a: _Attached) -> None:
    """Copy each module's experts back from the shard, in TensorRT-LLM's layout and strides."""
    hooks = a.hooks
    hooks.begin_step()
    for layer in a.layers:
        back = stored_rows(hooks.layer_weights(layer.layer_idx), layer.local_ids)
        for rec in (r for r in a.staged if r.layer is layer):
            restore_module_tensor(rec.tensor, back)
        hooks.layer_done(layer.layer_idx)
    hooks.end_step()


def detach() -> None:
    """Give the attached model its weights and TensorRT-LLM's forward back; close the hooks (collective)."""
    a, _state.attached = _state.attached, None
    if a is None:
        return
    try:
        if a.steps.state is not StepState.IDLE:
            a.steps.abort_after(RuntimeError("detached inside a step"))
        if a.staged:
            _restore_freed(a)
        for layer in a.layers:
            for name, data in a.kept.get(layer.layer_idx, {}).items():
                getattr(layer.holder, name).data = data
            vars(layer.module).pop("forward", None)
        for undo in reversed(a.partition):
            undo()
        vars(a.engine).pop("forward", None)
    finally:
        a.hooks.close()


def current_hooks() -> Optional[DwdpHooks]:
    """The hooks of the model attached in this process, if any."""
    return _state.attached.hooks if _state.attached is not None else None


def current_steps() -> Optional[Steps]:
    """The step protocol of the model attached in this process, if any."""
    return _state.attached.steps if _state.attached is not None else None


def installed_options() -> Optional[TrtllmDwdpOptions]:
    """The options install() was given in this process (None: not installed)."""
    return _state.options


def uninstall() -> None:
    """Undo everything install() and attach() did in this process."""
    detach()
    clear_hooks()
    while _state.undo:
        _state.undo.pop()()
    _state.options = None


def _close_at_exit() -> None:
    a, _state.attached = _state.attached, None
    try:
        a is not None and a.hooks.close(timeout_s=60.0)
    except Exception as e:  # noqa: BLE001 - exiting anyway
        log(f"closing DWDP at exit: {type(e).__name__}: {e}")
