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
from typing import List, Mapping, Optional, Sequence, Tuple

import torch

from .bootstrap import DwdpGroup, PeerLostError
from .config import DwdpConfig, DwdpConfigError
from .layout import stacked_views
from .memory import SharedHandle, get_backend
from .metrics import LayerMetrics, StepMetrics
from .moe.weights import ExpertWeights
from .placement import fetch_plan
from .prefetch.plan import LayerCopyPlan, build_layer_plan
from .prefetch import native
from .prefetch.prefetcher import Prefetcher
from .shard import MoeShape, WeightLoader, check_shape, fill_shard, plan_composite, replicate_rows

@dataclass(frozen=True)
class RankExports:
    """What a rank hands its group once at setup: its shard pieces' handles and a fingerprint of its options."""

    handles: Tuple[SharedHandle, ...]
    fingerprint: str


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
            replicated = fill_shard(owned.shard, pieces, layout, local, load_weights, shape, backend.device)
            exports = group.allgather(RankExports(tuple(p.handle for p in owned.shard), _fingerprint(config, shape)))
            for r, ex in enumerate(exports):
                if ex.fingerprint != exports[group.rank].fingerprint:
                    raise DwdpConfigError("config", config, f"group rank {r} was started with a different DWDP "
                                          "config or model shape", "launch every rank with the same options")
            for r in sources:
                for h in exports[r].handles:
                    backend.check_reachable(h, r)
                owned.peers[r] = [backend.open(h) for h in exports[r].handles]
            replicate_rows(replicated, local, group)
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
            if backend.device.type == "cuda" and native.available():  # one native call per hook call
                slices, bases = _ring_addresses(plans, peer_tensors, weights, layout, config.prefetch_depth)
                engine = native.NativeRing(weights, slices, bases, config.prefetch_depth, backend.device,
                                           measure_waits=measure_waits, issue_mode=config.pull_issue)
            elif backend.device.type == "cuda":
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
        prefetcher = engine if isinstance(engine, native.NativeRing) else Prefetcher(engine, plans,
                                                                                      config.prefetch_depth)
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
            own.abort_step()  # empties the slots (and drains this ring's own pulls, long done)
            self.prefetcher = own

    def layer_plan(self, layer_idx: int) -> LayerCopyPlan:
        """The copy plan that fills a slot with MoE layer `layer_idx`'s missing experts (its `nbytes`, its slices)."""
        return self._plans[self._layer(layer_idx)]

    def ring_spec(self) -> RingSpec:
        """The slot ring's pointers and copy plans, for a native driver (see RingSpec); GPU backends."""
        peers = {r: [p.tensor for p in ps] for r, ps in self._owned.peers.items()}
        slices, bases = _ring_addresses(self._plans, peers, self._weights, self.plan.layout,
                                        self.config.prefetch_depth)
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
        self.metrics()  # the steps' wait timings are read while the engine's events still exist
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


def _ring_addresses(plans, peers, weights, layout, num_slots):
    """Per layer ordinal its pull as (source address, slot offset, bytes) slices; per slot the base the offsets
    are taken from (its pieces seen through layer 0's view: every layer's view maps them at the same offsets)."""
    slices = tuple(tuple((peers[s.source][s.piece].data_ptr() + s.src_offset, s.dst_offset, s.nbytes)
                         for s in plan.slices) for plan in plans)
    bases = tuple(weights[(0, s)].w13.data_ptr() - layout.offsets[0] for s in range(num_slots))
    return slices, bases


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
