"""The host hook API: the only door from a serving engine into DWDP.

A host (our runtime, the TensorRT-LLM adapter, a plugin) calls, per forward step:

    hooks.begin_step()                      # executor, before the model's forward
    for each MoE layer, in order:
        w = hooks.layer_weights(layer_idx)  # waits for this layer's pull only
        y = moe(x, w)                       # experts read in place from shard + slot
        hooks.layer_done(layer_idx)         # frees the slot; schedules the next pull
    hooks.end_step()                        # executor, after the forward

In TensorRT-LLM terms: `ConfigurableMoE.forward_impl` brackets its scheduler call with
layer_weights / layer_done (using `self.layer_idx`), and `PyExecutor._forward_step`
brackets `model_engine.forward` with begin_step / end_step. None of these calls is a
collective: each rank runs at its own pace. Setup and close are collective.
"""

from __future__ import annotations

import collections.abc
import hashlib
import time
from dataclasses import dataclass
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

import torch

from .bootstrap import DwdpGroup, PeerLostError
from .config import DwdpConfig, DwdpConfigError
from .layout import BlockLayout, ShardLayout, swiglu_expert_specs
from .memory import get_backend
from .metrics import LayerMetrics, StepMetrics
from .moe.experts import SplitExpertWeights, WeightSegment
from .placement import fetch_plan, placement_from_config
from .prefetch.plan import build_layer_plan
from .prefetch.prefetcher import Prefetcher

# (MoE layer ordinal, expert ids) -> {"w13": [n, 2I, H], "w2": [n, H, I]}
WeightLoader = Callable[[int, Sequence[int]], Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class MoeShape:
    """The MoE part of a model, as the shards must match it.

    layer_ids: the model's index of each MoE layer (e.g. 3..60 for DeepSeek-V3, whose first
    three layers are dense); defaults to 0..num_layers-1.
    """

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_experts: int
    layer_ids: Optional[Tuple[int, ...]] = None

    def __post_init__(self):
        for name in ("num_layers", "hidden_size", "intermediate_size", "num_experts"):
            if getattr(self, name) < 1:
                raise ValueError(f"MoeShape.{name}={getattr(self, name)} must be >= 1")
        if self.layer_ids is not None:
            object.__setattr__(self, "layer_ids", tuple(int(i) for i in self.layer_ids))
            if len(self.layer_ids) != self.num_layers or len(set(self.layer_ids)) != self.num_layers:
                raise ValueError(f"MoeShape.layer_ids must list {self.num_layers} distinct layer indices")

    @property
    def ids(self) -> Tuple[int, ...]:
        return self.layer_ids if self.layer_ids is not None else tuple(range(self.num_layers))


class DwdpHooks:
    """One rank's DWDP state: its shard, its peers' mapped shards, slots and prefetcher."""

    def __init__(self, *, config, shape, group, placement, backend, local, peers, slots, prefetcher,
                 engine, weights_by_slot, plans):
        self.config, self.shape, self.group, self.placement = config, shape, group, placement
        self.backend, self._local, self._peers, self._slots = backend, local, peers, slots
        self.prefetcher, self.engine, self._weights, self._plans = prefetcher, engine, weights_by_slot, plans
        self._ordinal = {lid: i for i, lid in enumerate(shape.ids)}
        self._step = 0
        self._records: List = []
        self._pending: List[Tuple[int, float, List]] = []
        self._steps: List[StepMetrics] = []
        self._t0 = 0.0
        self._closed = False

    # ---- setup (collective) -------------------------------------------------------------

    @classmethod
    def setup(cls, config: DwdpConfig, shape: MoeShape, load_weights: WeightLoader, comm=None,
              device: Optional[torch.device] = None, measure_waits: bool = True,
              setup_timeout_s: float = 300.0) -> "DwdpHooks":
        """Validate, allocate and fill this rank's shard, exchange handles once, build the plans.

        Collective over the world communicator `comm` (MPI.COMM_WORLD by default).
        """
        if shape.num_experts != config.num_experts:
            raise DwdpConfigError("num_experts", config.num_experts,
                                  f"the model's MoE layers have {shape.num_experts} experts",
                                  f"set num_experts={shape.num_experts}")
        if config.weight_dtype == "float8_e4m3fn" and (shape.hidden_size % 128 or shape.intermediate_size % 128):
            raise DwdpConfigError("weight_dtype", config.weight_dtype,
                                  f"FP8 block scales cover 128x128 blocks; hidden {shape.hidden_size} and "
                                  f"intermediate {shape.intermediate_size} are not both multiples of 128",
                                  "use bfloat16 expert weights for this model")
        group = DwdpGroup.create(config, comm)
        local, peers, slots, engine = None, {}, [], None
        try:
            placement = placement_from_config(config)
            rank, g = group.rank, group.size
            specs = swiglu_expert_specs(shape.hidden_size, shape.intermediate_size, config.weight_dtype)
            layouts = [ShardLayout(BlockLayout(specs, len(placement.local_experts(r))), shape.num_layers)
                       for r in range(g)]
            missing = placement.missing_experts(rank)
            slot_block = BlockLayout(specs, len(missing))
            backend = get_backend(config.memory_backend, device)
            config.check_memory(layouts[rank].nbytes + config.prefetch_depth * slot_block.nbytes,
                                backend.free_bytes(), where=str(backend.device))

            fetches = [fetch_plan(placement, rank, layer) for layer in range(shape.num_layers)]
            sources = sorted({p.source for f in fetches for p in f.pulls})
            local = backend.allocate(layouts[rank].nbytes)
            _fill_shard(local.tensor, layouts[rank], placement.local_experts(rank), load_weights, shape)
            infos = group.allgather((local.handle, _fingerprint(config, shape)))
            mine = infos[rank][1]
            for r, (_, fp) in enumerate(infos):
                if fp != mine:
                    raise DwdpConfigError("config", config, f"group rank {r} was started with a different DWDP "
                                          "config or model shape", "launch every rank with the same options")
            for r in sources:
                backend.check_reachable(infos[r][0], r)
                peers[r] = backend.open(infos[r][0])
            group.barrier(setup_timeout_s, "setup (handle exchange)")
            local.after_peers_opened()

            slots = [backend.empty(slot_block.nbytes) for _ in range(config.prefetch_depth)]
            rows = [placement.index_in_rank(r) for r in range(g)]
            plans = [build_layer_plan(fetches[layer], layer, layouts, rows, slot_block, config.slice_bytes)
                     for layer in range(shape.num_layers)]
            peer_tensors = {r: p.tensor for r, p in peers.items()}
            if backend.device.type == "cuda":
                from .prefetch.engine_cuda import CudaCopyEngine
                engine = CudaCopyEngine(slots, peer_tensors, plans, measure_waits=measure_waits,
                                        issue_mode=config.pull_issue)
            else:
                from .prefetch.engine_cpu import CpuCopyEngine
                engine = CpuCopyEngine(slots, peer_tensors)
        except BaseException:
            if engine is not None:
                engine.close()
            for p in peers.values():
                p.close()
            if local is not None:
                local.close()
            group.free()
            raise

        local_ids = placement.local_experts(rank)
        weights = {}
        for layer in range(shape.num_layers):
            local_seg = WeightSegment(local_ids, layouts[rank].block.views(local.tensor, layouts[rank].layer_offset(layer)))
            for s, slot in enumerate(slots):
                segs = (local_seg, WeightSegment(missing, slot_block.views(slot))) if missing else (local_seg,)
                weights[(layer, s)] = SplitExpertWeights(shape.num_experts, segs)
        prefetcher = Prefetcher(engine, plans, config.prefetch_depth)
        return cls(config=config, shape=shape, group=group, placement=placement, backend=backend, local=local,
                   peers=peers, slots=slots, prefetcher=prefetcher, engine=engine, weights_by_slot=weights,
                   plans=plans)

    # ---- per step (never collective) -------------------------------------------------------

    def begin_step(self) -> None:
        self._t0 = time.perf_counter()
        self.prefetcher.begin_step()
        self._records = []

    def layer_weights(self, layer_idx: int) -> SplitExpertWeights:
        """Weights of MoE layer `layer_idx` (the model's layer index); waits for its pull only."""
        layer = self._layer(layer_idx)
        got = self.prefetcher.acquire(layer)
        self._records.append((self.shape.ids[layer], got.wait, self._plans[layer].nbytes if got.fresh else 0))
        return self._weights[(layer, got.slot)]

    def layer_done(self, layer_idx: int) -> None:
        """Layer's MoE has been issued on the current stream; its slot may be refilled after it."""
        self.prefetcher.release(self._layer(layer_idx))

    def end_step(self) -> None:
        self.prefetcher.end_step()
        self._pending.append((self._step, time.perf_counter() - self._t0, self._records))
        self._step += 1

    def _layer(self, layer_idx: int) -> int:
        try:
            return self._ordinal[layer_idx]
        except KeyError:
            raise ValueError(f"layer {layer_idx} is not a DWDP MoE layer (MoE layers: {self.shape.ids})") from None

    # ---- metrics and teardown ---------------------------------------------------------------

    def metrics(self) -> Sequence[StepMetrics]:
        """Per-step metrics so far, as a read-only view that grows with the run (no copy per call).
        On GPUs this waits for the new steps' device work to finish."""
        for step, wall, records in self._pending:
            layers = tuple(LayerMetrics(lid, self.engine.seconds(rec), pulled) for lid, rec, pulled in records)
            self._steps.append(StepMetrics(step, wall, layers))
        self._pending = []
        return _StepsView(self._steps)

    def last_step(self) -> StepMetrics:
        """Metrics of the latest finished step."""
        return self.metrics()[-1]

    @property
    def local_experts(self) -> Tuple[int, ...]:
        return self.placement.local_experts(self.group.rank)

    def close(self, timeout_s: float = 120.0) -> None:
        """Collective: drain pulls, unmap peers, wait for every peer to unmap ours, free it."""
        if self._closed:
            return
        self._closed = True
        self.engine.synchronize()
        self.engine.close()
        for p in self._peers.values():
            p.close()
        self._weights.clear()
        self._slots.clear()
        try:
            self.group.barrier(timeout_s, "shutdown")
        finally:
            self._local.close()
            self.group.free()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:  # a failing rank must not wait at the shutdown barrier for peers that wait on it
            try:
                self.close(timeout_s=5.0)
            except PeerLostError:
                pass


def _fingerprint(config: DwdpConfig, shape: MoeShape) -> str:
    return hashlib.sha1(repr((config, shape)).encode()).hexdigest()


def _fill_shard(buf: torch.Tensor, layout: ShardLayout, experts: Sequence[int], load: WeightLoader,
                shape: MoeShape) -> None:
    for layer in range(layout.num_layers):
        views = layout.block.views(buf, layout.layer_offset(layer))
        if not experts:
            continue
        tensors = load(layer, list(experts))
        for name, dst in views.items():
            src = tensors.get(name) if isinstance(tensors, Mapping) else None
            if src is None or tuple(src.shape) != tuple(dst.shape):
                got = None if src is None else tuple(src.shape)
                raise DwdpConfigError(
                    "model", f"MoE layer {shape.ids[layer]}",
                    f"weight {name!r} of experts {list(experts)[:4]}... has shape {got}, the shard expects "
                    f"{tuple(dst.shape)} (hidden {shape.hidden_size}, intermediate {shape.intermediate_size})",
                    "pass the MoE shape of the model being loaded")
            dst.copy_(src)


class _StepsView(collections.abc.Sequence):
    """Read-only view of the hooks' step list."""

    def __init__(self, steps: List[StepMetrics]):
        self._steps = steps

    def __getitem__(self, i):
        return self._steps[i]

    def __len__(self) -> int:
        return len(self._steps)
