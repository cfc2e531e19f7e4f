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
import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .bootstrap import DwdpGroup, PeerLostError
from .config import DwdpConfig, DwdpConfigError
from .layout import ALIGN, CompositeLayout, MemoryPlan, W13Order, memory_plan, runs, stacked_views, swiglu_expert_specs
from .memory import SharedHandle, get_backend
from .metrics import LayerMetrics, StepMetrics
from .moe.weights import ExpertWeights
from .placement import Placement, fetch_plan, placement_from_config
from .prefetch.plan import LayerCopyPlan, build_layer_plan
from .prefetch.prefetcher import Prefetcher

# (MoE layer ordinal, expert ids) -> {"w13": [n, 2I, H], "w2": [n, H, I], and for FP8 "w13_scale", "w2_scale"}
WeightLoader = Callable[[int, Sequence[int]], Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class MoeShape:
    """The MoE part of a model, as the shards must match it.

    layer_ids: the model's index of each MoE layer (e.g. 3..60 for DeepSeek-V3, whose first
    three layers are dense); defaults to 0..num_layers-1.
    w13_order: the row order of w13 the host's kernels read (TensorRT-LLM's w3_w1 is UP_GATE); the shard
    holds the loader's tensors as given.
    """

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_experts: int
    layer_ids: Optional[Tuple[int, ...]] = None
    w13_order: W13Order = W13Order.GATE_UP

    def __post_init__(self):
        for name in ("num_layers", "hidden_size", "intermediate_size", "num_experts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DwdpConfigError(f"MoeShape.{name}", value, "it must be a positive integer",
                                      f"pass the model's {name.replace('_', ' ')} as an int >= 1")
        if self.layer_ids is not None:
            object.__setattr__(self, "layer_ids", tuple(int(i) for i in self.layer_ids))
            if len(self.layer_ids) != self.num_layers or len(set(self.layer_ids)) != self.num_layers:
                raise DwdpConfigError("MoeShape.layer_ids", self.layer_ids, f"it must list {self.num_layers} "
                                      "distinct layer indices, one per MoE layer",
                                      "give the model's index of each MoE layer once, or leave layer_ids out")

    @property
    def ids(self) -> Tuple[int, ...]:
        return self.layer_ids if self.layer_ids is not None else tuple(range(self.num_layers))


@dataclass(frozen=True)
class RankExports:
    """What a rank hands its group once at setup: its shard pieces' handles and a fingerprint of its options."""

    handles: Tuple[SharedHandle, ...]
    fingerprint: str


@dataclass(frozen=True)
class CompositePlan:
    """Everything setup decides before touching memory; pure, so `plan_composite` can refuse early."""

    placement: Placement
    layout: CompositeLayout
    memory: MemoryPlan
    local: Tuple[int, ...]
    missing: Tuple[int, ...]


def check_shape(config: DwdpConfig, shape: MoeShape):
    """The expert tensor specs of this model under this config; DwdpConfigError where they do not fit."""
    if shape.num_experts != config.num_experts:
        raise DwdpConfigError("num_experts", config.num_experts,
                              f"the model's MoE layers have {shape.num_experts} experts",
                              f"set num_experts={shape.num_experts}")
    try:
        return swiglu_expert_specs(shape.hidden_size, shape.intermediate_size, config.weight_dtype)
    except ValueError as e:
        raise DwdpConfigError("weight_dtype", config.weight_dtype, str(e), "use bfloat16 expert weights for this model")


def plan_composite(config: DwdpConfig, shape: MoeShape, rank: int, granularity: int,
                   duplicate_shard: bool = False, contiguous: bool = False) -> CompositePlan:
    """Placement, composite layout and memory of group rank `rank`; raises DwdpConfigError on bad input.
    contiguous: the host's kernels assume each expert right after the previous one (no padded stride)."""
    specs = check_shape(config, shape)
    placement = placement_from_config(config)
    bounds = set()
    for r in range(placement.group_size):
        for ids in (placement.local_experts(r), placement.missing_experts(r)):
            for first, count in runs(ids):
                bounds.update((first, first + count))
    layout = CompositeLayout.build(specs, shape.num_experts, granularity, sorted(bounds))
    if contiguous and layout.padding_bytes_per_expert:
        _refuse_padding(config, shape, specs, granularity, bounds)
    local, missing = placement.local_experts(rank), placement.missing_experts(rank)
    mem = memory_plan(layout, shape.num_layers, local, missing, config.prefetch_depth, duplicate_shard)
    return CompositePlan(placement, layout, mem, local, missing)


def _refuse_padding(config: DwdpConfig, shape: MoeShape, specs, granularity: int, bounds) -> None:
    sizes = ", ".join(f"{s.name} {s.nbytes} B" for s in specs.pooled)
    unit = 1
    for s in specs.pooled:  # runs of `unit` experts fill whole granules of every pooled tensor
        k = granularity // math.gcd(granularity, s.nbytes)
        unit = unit * k // math.gcd(unit, k)
    off = sorted(b for b in bounds if 0 < b < shape.num_experts and b % unit)
    if not off:
        raise DwdpConfigError("weight_dtype", config.weight_dtype, f"the expert tensors ({sizes}) are not multiples "
                              f"of {ALIGN} bytes, so experts need a padded stride the host's kernels cannot read",
                              "serve this model without DWDP")
    where = config.placement if config.placement is not None else f"even over {config.group_size} ranks"
    fix = (f"split the experts at multiples of {unit} (a group size or explicit placement to match)"
           if unit < shape.num_experts else "serve this model without DWDP: its experts are too small to split "
           f"on the {granularity}-byte granularity")
    raise DwdpConfigError("placement", where, f"it splits the {shape.num_experts} experts at {off}, where the expert "
                          f"tensors ({sizes}) do not end on the {granularity}-byte mapping granularity, and the host's "
                          "kernels cannot read a padded expert stride", fix)


@dataclass(frozen=True)
class RingSpec:
    """What another driver of this rank's slot ring needs (the TensorRT plugin's C++ context): per (layer ordinal,
    slot) the layer's composite experts; per layer ordinal its pull as (source address, offset, bytes) slices into
    a slot; per slot the address those offsets are taken from (the slot's pieces seen through layer 0's view: every
    layer's view maps them at the same offsets)."""

    views: Mapping[Tuple[int, int], ExpertWeights]
    slices: Tuple[Tuple[Tuple[int, int, int], ...], ...]
    slot_bases: Tuple[int, ...]


class DwdpHooks:
    """One rank's DWDP state: its shard pieces, peers' mapped pieces, slot pieces, composite views, prefetcher."""

    def __init__(self, *, config, shape, group, plan, backend, owned, prefetcher, engine, weights_by_slot, plans,
                 replicated):
        self.config, self.shape, self.group, self.plan = config, shape, group, plan
        self.placement = plan.placement
        self.backend, self._owned = backend, owned
        self.prefetcher, self.engine, self._weights, self._plans = prefetcher, engine, weights_by_slot, plans
        self._replicated = replicated
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
              setup_timeout_s: float = 300.0, contiguous: bool = False) -> "DwdpHooks":
        """Validate, allocate and fill this rank's shard, exchange handles once, map the composite views and
        build the copy plans. Collective over the world communicator `comm` (MPI.COMM_WORLD by default)."""
        check_shape(config, shape)  # before any rank starts talking
        group = DwdpGroup.create(config, comm)
        owned = _Owned()
        engine = None
        try:
            backend = get_backend(config.memory_backend, device)
            owned.backend = backend
            plan = plan_composite(config, shape, group.rank, backend.granularity,
                                  duplicate_shard=not backend.composes_exports, contiguous=contiguous)
            config.check_memory(plan.memory.total, backend.free_bytes(), where=str(backend.device),
                                detail=plan.memory.describe())
            layout, local, missing = plan.layout, plan.local, plan.missing
            g, L = group.size, shape.num_layers
            locals_ = [plan.placement.local_experts(r) for r in range(g)]
            fetches = [fetch_plan(plan.placement, group.rank, layer) for layer in range(L)]
            sources = sorted({p.source for f in fetches for p in f.pulls})

            pieces = layout.pieces(local)
            owned.shard = [backend.allocate(p.nbytes) for _ in range(L) for p in pieces]
            replicated = _fill_shard(owned.shard, pieces, layout, local, load_weights, shape, backend.device)
            exports = group.allgather(RankExports(tuple(p.handle for p in owned.shard), _fingerprint(config, shape)))
            for r, ex in enumerate(exports):
                if ex.fingerprint != exports[group.rank].fingerprint:
                    raise DwdpConfigError("config", config, f"group rank {r} was started with a different DWDP "
                                          "config or model shape", "launch every rank with the same options")
            for r in sources:
                for h in exports[r].handles:
                    backend.check_reachable(h, r)
                owned.peers[r] = [backend.open(h) for h in exports[r].handles]
            _replicate(replicated, local, group)
            if backend.device.type == "cuda":  # the loader's temporaries must not hold memory the slots need
                torch.cuda.empty_cache()
            group.barrier(setup_timeout_s, "setup (handle exchange)")
            backend.exports_done()
            for p in owned.shard:
                p.after_peers_opened()

            slot_pieces = layout.pieces(missing) if missing else ()
            owned.slots = [[backend.private(p.nbytes) for p in slot_pieces] for _ in range(config.prefetch_depth)]
            regions, weights = {}, {}
            for layer in range(L):
                mine = [(p.offset, owned.shard[layer * len(pieces) + i]) for i, p in enumerate(pieces)]
                for s in range(config.prefetch_depth):
                    if s and not missing:  # nothing is pulled: every slot sees the same view
                        regions[(layer, s)], weights[(layer, s)] = regions[(layer, 0)], weights[(layer, 0)]
                        continue
                    view = backend.compose(layout.nbytes, mine + [(p.offset, owned.slots[s][i])
                                                                  for i, p in enumerate(slot_pieces)])
                    owned.views.append(view)
                    regions[(layer, s)] = view.tensor
                    weights[(layer, s)] = ExpertWeights.from_tensors(
                        dict(stacked_views(view.tensor, layout), **replicated[layer]), shape.w13_order)

            plans = [build_layer_plan(fetches[layer], layer, layout, locals_, config.slice_bytes) for layer in range(L)]
            peer_tensors = {r: [p.tensor for p in ps] for r, ps in owned.peers.items()}
            if backend.device.type == "cuda":
                from .prefetch.engine_cuda import CudaCopyEngine
                engine = CudaCopyEngine(config.prefetch_depth, regions, peer_tensors, plans, backend.device,
                                        measure_waits=measure_waits, issue_mode=config.pull_issue)
            else:
                from .prefetch.engine_cpu import CpuCopyEngine
                engine = CpuCopyEngine(config.prefetch_depth, regions, peer_tensors)
        except BaseException:
            if engine is not None:
                engine.close()
            owned.close()
            group.free()
            raise
        prefetcher = Prefetcher(engine, plans, config.prefetch_depth)
        return cls(config=config, shape=shape, group=group, plan=plan, backend=backend, owned=owned,
                   prefetcher=prefetcher, engine=engine, weights_by_slot=weights, plans=plans, replicated=replicated)

    # ---- per step (never collective) -------------------------------------------------------

    def begin_step(self) -> None:
        self._t0 = time.perf_counter()
        self.prefetcher.begin_step()
        self._records = []

    def layer_weights(self, layer_idx: int) -> ExpertWeights:
        """Experts of MoE layer `layer_idx` (the model's layer index) as composite [E, ...] tensors, valid until
        layer_done(layer_idx); work queued on the current stream after this call sees the layer's pull."""
        layer = self._layer(layer_idx)
        got = self.prefetcher.acquire(layer)
        self._records.append((self.shape.ids[layer], got.wait, self._plans[layer].nbytes if got.fresh else 0))
        return self._weights[(layer, got.slot)]

    def layer_done(self, layer_idx: int) -> None:
        """Layer's MoE has been issued on the current stream; its slot may be refilled after it."""
        self.prefetcher.release(self._layer(layer_idx))

    def abort_step(self) -> None:
        """After a step failed part-way (an exception in the forward): close it, so the next begin_step works."""
        self.prefetcher.abort_step()
        self._records = []

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

    # ---- lending the slot ring to a native driver (the TensorRT plugin) ---------------------------------------

    @property
    def ring_lent(self) -> bool:
        return isinstance(self.prefetcher, _LentRing)

    def lend_ring(self, borrower: str) -> RingSpec:
        """Hand the slot ring (views, pull slices, slot bases) to a native driver, named `borrower` in errors: until
        `return_ring()`, a hook call that would pull raises RingLentError instead of racing the borrower."""
        if self.ring_lent:
            raise RingLentError(f"the slot ring is already lent to {self.prefetcher.borrower}")
        if self.in_step:
            raise RingLentError("the Python hooks have a step open: end_step() before lending the slot ring")
        self.engine.synchronize()  # pulls issued here land before the borrower reuses their slots
        spec = self.ring_spec()
        self.prefetcher = _LentRing(borrower, self.prefetcher)
        return spec

    def return_ring(self) -> None:
        """Take the ring back with empty slots (the borrower's pulls left them holding layers Python did not
        track). Call it once the borrower's work on the slots has finished."""
        if self.ring_lent:
            own = self.prefetcher.own
            self.prefetcher = Prefetcher(own.engine, own.plans, own.num_slots)

    def layer_plan(self, layer_idx: int) -> LayerCopyPlan:
        """The copy plan that fills a slot with MoE layer `layer_idx`'s missing experts (its `nbytes`, its slices)."""
        return self._plans[self._layer(layer_idx)]

    def ring_spec(self) -> RingSpec:
        """The slot ring's pointers and copy plans, for a native driver (see RingSpec); GPU backends."""
        peers = {r: [p.tensor for p in ps] for r, ps in self._owned.peers.items()}
        slices = tuple(tuple((peers[s.source][s.piece].data_ptr() + s.src_offset, s.dst_offset, s.nbytes)
                             for s in plan.slices) for plan in self._plans)
        bases = tuple(self._weights[(0, s)].w13.data_ptr() - self.plan.layout.offsets[0]
                      for s in range(self.config.prefetch_depth))
        return RingSpec(dict(self._weights), slices, bases)

    @property
    def in_step(self) -> bool:
        return not self.ring_lent and self.prefetcher.in_step

    @property
    def local_experts(self) -> Tuple[int, ...]:
        return self.placement.local_experts(self.group.rank)

    def close(self, timeout_s: float = 120.0) -> None:
        """Collective: drain pulls, unmap peers and views, wait for every peer to unmap ours, free it."""
        if self._closed:
            return
        self._closed = True
        self.engine.synchronize()
        self.engine.close()
        self._weights.clear()
        self._replicated.clear()
        self._owned.close_mappings()
        try:
            self.group.barrier(timeout_s, "shutdown")
        finally:
            self._owned.close()
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


class _Owned:
    """What setup allocated or mapped, so a failure at any point, or close(), frees exactly that."""

    def __init__(self):
        self.backend, self.shard, self.peers, self.slots, self.views = None, [], {}, [], []

    def close_mappings(self) -> None:
        for v in self.views:
            v.close()
        self.views = []
        for ps in self.peers.values():
            for p in ps:
                p.close()
        self.peers = {}
        for slot in self.slots:
            for p in slot:
                p.close()
        self.slots = []

    def close(self) -> None:
        self.close_mappings()
        for p in self.shard:
            p.close()
        self.shard = []
        if self.backend is not None:
            self.backend.close()
            self.backend = None


def _fingerprint(config: DwdpConfig, shape: MoeShape) -> str:
    return hashlib.sha1(repr((config, shape)).encode()).hexdigest()


def _fill_shard(shard, pieces, layout: CompositeLayout, local: Sequence[int], load: WeightLoader, shape: MoeShape,
                device) -> List[Dict[str, torch.Tensor]]:
    """Copy this rank's experts into its pieces; returns per layer the replicated tensors [E, ...] with the
    local experts' rows filled (the rest come from their owners in _replicate)."""
    row = {e: i for i, e in enumerate(local)}
    replicated = []
    for layer in range(shape.num_layers):
        rep = {s.name: torch.zeros((shape.num_experts, *s.shape), dtype=getattr(torch, s.dtype), device=device)
               for s in layout.specs.replicated}
        replicated.append(rep)
        if not local:
            continue
        tensors = load(layer, list(local))
        for spec in layout.specs.all:
            src = tensors.get(spec.name) if isinstance(tensors, Mapping) else None
            want = (len(local), *spec.shape)
            if src is None or tuple(src.shape) != want:
                got = None if src is None else tuple(src.shape)
                raise DwdpConfigError(
                    "model", f"MoE layer {shape.ids[layer]}",
                    f"weight {spec.name!r} of experts {list(local)[:4]}... has shape {got}, the shard expects {want} "
                    f"(hidden {shape.hidden_size}, intermediate {shape.intermediate_size}, {spec.dtype})",
                    "pass the MoE shape and weight dtype of the model being loaded")
            if spec.name in rep:
                rep[spec.name][list(local)] = src.to(device=device, dtype=rep[spec.name].dtype)
        for i, p in enumerate(pieces):
            dst = piece_view(shard[layer * len(pieces) + i].tensor, layout, p)
            dst.copy_(tensors[p.tensor][row[p.first]: row[p.first] + p.count].to(device=dst.device, dtype=dst.dtype))
    return replicated


def piece_view(buf: torch.Tensor, layout: CompositeLayout, piece) -> torch.Tensor:
    """[count, *shape] view of a piece's experts in its own allocation `buf` (experts `stride` apart)."""
    i = layout.index(piece.tensor)
    one = CompositeLayout(type(layout.specs)((layout.specs.pooled[i],)), piece.count, layout.granularity,
                          (layout.strides[i],), (0,), piece.nbytes)
    return stacked_views(buf, one)[piece.tensor]


def _replicate(replicated: List[Dict[str, torch.Tensor]], local: Sequence[int], group) -> None:
    """Fill the other ranks' rows of the replicated tensors from their owners (collective, once at setup)."""
    if not replicated or not replicated[0]:
        return
    mine = [{k: v[list(local)].cpu() for k, v in rep.items()} if local else {} for rep in replicated]
    for ids, theirs in group.allgather((tuple(local), mine)):
        for rep, t in zip(replicated, theirs):
            for k, v in t.items():
                rep[k][list(ids)] = v.to(rep[k].device)


class RingLentError(RuntimeError):
    """A hook call would pull while the slot ring is lent to a native driver (DwdpHooks.lend_ring)."""


class _LentRing:
    """Stands in for the prefetcher while the ring is lent: any use is a clear error."""

    def __init__(self, borrower: str, own: Prefetcher):
        self.borrower, self.own = borrower, own

    def __getattr__(self, name):
        def refuse(*_args, **_kw):
            raise RingLentError(f"{self.borrower} owns the prefetch slots; the Python hooks cannot {name}() until "
                                "it gives them back")
        return refuse


class _StepsView(collections.abc.Sequence):
    """Read-only view of the hooks' step list."""

    def __init__(self, steps: List[StepMetrics]):
        self._steps = steps

    def __getitem__(self, i):
        return self._steps[i]

    def __len__(self) -> int:
        return len(self._steps)
