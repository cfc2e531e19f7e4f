"""TensorRT engine flow, runtime side: set up and register the DWDP context before an engine is deserialised.

TensorRT-LLM opens engines in two ways:
* `tensorrt_llm.runtime.ModelRunner.from_dir(engine_dir, *, rank, ...)` (Python session) and
  `ModelRunnerCpp.from_dir(engine_dir, *, rank, ...)` (the C++ executor): classmethods that deserialise the engine
  inside; `patch_runner_class` wraps `from_dir`.
* `LLM(model=engine_dir, backend="tensorrt")` and `trtllm-serve` on an engine directory: each MPI worker's
  `tensorrt_llm.executor.base_worker.BaseWorker.setup_engine(self)` builds `tllm.Executor(self._engine, ...)` from
  `self._engine` (a path, or one per rank in a list indexed by self.rank); `patch_worker_class` wraps it.
Where the engine directory holds the marker a DWDP build wrote (build.ENGINE_MARKER), the wrapper first loads
the plugin library (so TensorRT finds DwdpMoe's creator), then sets up DwdpHooks over the group (collective,
mpi4py) with the shards read from the build's checkpoint, and registers the C++ context under the engine's context
id. Engines without the marker, and engines handed over in memory, open unchanged. The context lives until
`close_engine_context()` (also at interpreter exit).
"""

from __future__ import annotations

import atexit
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Optional, Sequence

from ...config import DwdpConfigError, WeightDtype
from .build import ENGINE_MARKER, ExpertDtype, plugin_library_path

if TYPE_CHECKING:
    from ...hooks import MoeShape


@dataclass(frozen=True)
class EngineMarker:
    """What a DWDP build recorded next to its engine."""

    engine_dir: str
    group_size: int
    context_id: int
    dtype: ExpertDtype
    checkpoint_dir: Optional[str]

    @classmethod
    def read(cls, engine_dir: str) -> Optional["EngineMarker"]:
        path = os.path.join(str(engine_dir), ENGINE_MARKER)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            d = json.load(f)
        return cls(str(engine_dir), int(d["group_size"]), int(d["context_id"]), ExpertDtype[d["dtype"]],
                   d.get("checkpoint_dir"))


@dataclass
class _Runtime:
    hooks: object = None
    context: object = None
    exit_registered: bool = False


_runtime = _Runtime()


def patch_runner_class(runner_cls, setup: Optional[Callable[[EngineMarker], None]] = None) -> None:
    """Wrap runner_cls.from_dir (a classmethod) so a DWDP engine's context exists before it is deserialised.
    setup(marker) defaults to setup_engine_context; tests pass a recorder."""
    original = runner_cls.from_dir.__func__  # the classmethod's function
    if getattr(original, "_dwdp_wrapped", False):
        return

    def from_dir(cls, engine_dir, *args, **kwargs):
        marker = EngineMarker.read(engine_dir)
        if marker is not None:
            if kwargs.get("cuda_graph_mode"):
                # NOTE: the plugin refuses capture too; this says so before the context and engine are set up.
                raise DwdpConfigError("cuda_graph_mode", True, "DWDP MoE layers cannot be replayed from a CUDA graph "
                                      "(a replay would reuse the capture's prefetch slots and pulls)",
                                      "pass cuda_graph_mode=False (run.py: leave out --cuda_graph_mode)")
            (setup or setup_engine_context)(marker)
        return original(cls, engine_dir, *args, **kwargs)

    from_dir._dwdp_wrapped = True
    from_dir._dwdp_original = original
    runner_cls.from_dir = classmethod(from_dir)


def patch_worker_class(worker_cls, setup: Optional[Callable[[EngineMarker], None]] = None) -> None:
    """Wrap worker_cls.setup_engine so a DWDP engine's context exists before the executor deserialises it.
    setup(marker) defaults to setup_engine_context; tests pass a recorder."""
    original = worker_cls.setup_engine
    if getattr(original, "_dwdp_wrapped", False):
        return

    def setup_engine(self, *args, **kwargs):
        engine = getattr(self, "_engine", None)
        if isinstance(engine, (list, tuple)):
            engine = engine[self.rank]
        if isinstance(engine, (str, os.PathLike)):
            marker = EngineMarker.read(os.fspath(engine))
            if marker is not None:
                (setup or setup_engine_context)(marker)
        return original(self, *args, **kwargs)

    setup_engine._dwdp_wrapped = True
    setup_engine._dwdp_original = original
    worker_cls.setup_engine = setup_engine


def patch_worker_module(module) -> None:
    """For tensorrt_llm.executor.base_worker (BaseWorker: the LLM API's and trtllm-serve's workers)."""
    cls = getattr(module, "BaseWorker", None)
    if cls is not None and "setup_engine" in cls.__dict__:
        patch_worker_class(cls)


def patch_runtime_module(module) -> None:
    """For tensorrt_llm.runtime.model_runner (ModelRunner) and model_runner_cpp (ModelRunnerCpp)."""
    for name in ("ModelRunner", "ModelRunnerCpp"):
        cls = getattr(module, name, None)
        if cls is not None and "from_dir" in cls.__dict__:
            patch_runner_class(cls)


def moe_shape_of(engine_dir: str):
    """MoeShape from the engine's config.json (`pretrained_config`, TensorRT-LLM's names), and its top-k."""
    from ...hooks import MoeShape

    with open(os.path.join(engine_dir, "config.json")) as f:
        pc = json.load(f)["pretrained_config"]
    moe = pc.get("moe") or {}
    experts = int(moe.get("num_experts") or pc.get("moe_num_experts") or 0)
    if experts < 1:
        raise DwdpConfigError("engine", engine_dir, "its config.json names no MoE experts",
                              "build a MoE model (Mixtral, Qwen-MoE...) with --dwdp_group_size")
    inter = int(pc.get("moe_intermediate_size") or pc["intermediate_size"])
    return MoeShape(int(pc["num_hidden_layers"]), int(pc["hidden_size"]), inter, experts)


def checkpoint_loader(checkpoint_dir: str, shape: MoeShape, rank_file: str = "rank0.safetensors"):
    """WeightLoader over a TensorRT-LLM checkpoint: layer l's `transformer.layers.{l}.mlp.fc.weight` [E, 2I, H]
    (up rows first: TensorRT-LLM's converters concatenate w3 then w1, e.g. models/llama/convert.py) and
    `mlp.proj.weight` [E, H, I]. Returns gate rows first, the plugin's order. Reads only the requested experts."""
    import torch
    from safetensors import safe_open

    path = os.path.join(checkpoint_dir, rank_file)
    if not os.path.exists(path):
        raise DwdpConfigError("checkpoint_dir", checkpoint_dir, f"it has no {rank_file}",
                              "build from a TensorRT-LLM checkpoint with moe_tp_size=1 and moe_ep_size=1")
    E, H, I = shape.num_experts, shape.hidden_size, shape.intermediate_size

    def load(layer: int, experts: Sequence[int]) -> Mapping[str, "torch.Tensor"]:
        with safe_open(path, framework="pt") as f:
            fc = f.get_slice(f"transformer.layers.{layer}.mlp.fc.weight")
            proj = f.get_slice(f"transformer.layers.{layer}.mlp.proj.weight")
            got = (tuple(fc.get_shape()), tuple(proj.get_shape()))
            if got != ((E, 2 * I, H), (E, H, I)):
                # a converter run with moe_ep_size / moe_tp_size > 1 stores only this rank's part
                raise DwdpConfigError("checkpoint_dir", checkpoint_dir, f"layer {layer}'s experts are {got[0]} and "
                                      f"{got[1]} in {rank_file}, not all {E} experts ({E}, {2 * I}, {H}) and "
                                      f"({E}, {H}, {I})", "convert the checkpoint with moe_tp_size=1 and moe_ep_size=1")
            w13 = torch.stack([fc[e] for e in experts])
            w2 = torch.stack([proj[e] for e in experts])
        up, gate = w13.chunk(2, dim=1)
        return {"w13": torch.cat([gate, up], dim=1).contiguous(), "w2": w2}

    return load


def setup_engine_context(marker: EngineMarker, comm=None) -> None:
    """Collective over the group: load the plugin library, set up DwdpHooks from the checkpoint's experts and
    register the C++ context under marker.context_id. Options (prefetch depth, backend...) come from the
    TRTLLM_DWDP / TRTLLM_DWDP_OPTIONS section."""
    import torch

    from ...hooks import DwdpHooks
    from .context import register_plugin_context
    from .build import load_plugin_library
    from ..trtllm.options import load_options

    if _runtime.context is not None:
        raise DwdpConfigError("engine", marker.engine_dir, "a DWDP engine context is already set up in this process",
                              "open one DWDP engine per process, or close_engine_context() first")
    if marker.checkpoint_dir is None:
        raise DwdpConfigError(ENGINE_MARKER, marker.engine_dir, "the build recorded no --checkpoint_dir",
                              "rebuild with --checkpoint_dir so the runtime can fill the expert shards")
    load_plugin_library(plugin_library_path())
    options = load_options()
    shape = moe_shape_of(marker.engine_dir)
    dtype = (WeightDtype.FP8 if marker.dtype is ExpertDtype.FP8_BLOCK else WeightDtype.BF16).value
    if options is not None:
        config = options.config(num_experts=shape.num_experts, group_size=marker.group_size, weight_dtype=dtype)
    else:
        from ...config import DwdpConfig
        config = DwdpConfig(group_size=marker.group_size, num_experts=shape.num_experts, weight_dtype=dtype)
    hooks = DwdpHooks.setup(config, shape, checkpoint_loader(marker.checkpoint_dir, shape), comm=comm,
                            device=torch.device("cuda", torch.cuda.current_device()))
    try:
        _runtime.context = register_plugin_context(hooks, marker.context_id)
    except BaseException:
        hooks.close()
        raise
    _runtime.hooks = hooks
    if not _runtime.exit_registered:
        _runtime.exit_registered = True
        atexit.register(close_engine_context)


def close_engine_context() -> None:
    """Unregister the context and close the hooks (collective): after the engine's last run."""
    ctx, hooks = _runtime.context, _runtime.hooks
    _runtime.context = _runtime.hooks = None
    if ctx is not None:
        ctx.close()
    if hooks is not None:
        hooks.close()
