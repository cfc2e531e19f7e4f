"""A deployment to simulate: machine x model x precision x ranks x workload, validated.

Bad values raise ValueError naming the CLI option and the fix, before any simulation runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Dict, Optional, Tuple

from ..config import Choice
from ..placement import Placement, even_placement, fetch_plan, redundant_placement
from ..workloads.requests import IslDist
from .dep import A2A_KINDS
from .machines import Efficiency, Machine, Rates, check_precision
from .models import MoEModel, Precision


# EPLB's redundant expert slots per rank when turned on without a count: DeepSeek-V3's prefill deployment
# (technical report, arXiv 2412.19437, section 3.4: 32 redundant experts over 32 GPUs, one per GPU).
DEFAULT_EPLB_REDUNDANT = 1


class DepModel(Choice):
    """How DEP is run.

    TUNED: as a tuned serving engine runs it: one row per (token, destination rank), a fused
        weighted combine, chunked prefill unless DepPacking.SAME, and the dispatch overlapped with
        the shared expert (DeepEP-style hooks), so only what that window does not cover of the
        dispatch, and all of the combine, is exposed.
    LEGACY: this project's first DEP model: the scenario's packing, all-to-all fully exposed.
    """

    TUNED = "tuned"
    LEGACY = "legacy"


class DepPacking(Choice):
    """How a TUNED DEP packs its iterations: CHUNKED fills every iteration to max_num_tokens (chunked
    prefill, the strongest DEP); SAME packs as the scenario does for DWDP (as the published runs' engine
    did: TensorRT-LLM's context server without chunked prefill, its DWDP reproduction config sets none)."""

    CHUNKED = "chunked"
    SAME = "same"


class PullStreams(Choice):
    """How an unsliced pull orders its per-owner copies: ONE stream, owner after owner in ascending
    rank order (every rank starts on the same owner), or a stream PER_SOURCE, starting with the owner
    after the rank (rank + 1, rank + 2, ...), so ranks start on different owners. NOTE: the
    simulator runs a rank's per-owner copies one after another in both cases (its NVLink ingress
    bounds them together anyway). Each source's copy engine serves its queue first in, first out.
    Sliced pulls interleave slices over the owners either way."""

    ONE = "one"
    PER_SOURCE = "per-source"


@dataclass(frozen=True)
class MemoryFit:
    """Weights per rank (GB) under each mode, against HBM capacity (KV cache not counted)."""

    dwdp_gb: float
    dep_gb: float
    capacity_gb: float

    @property
    def dwdp_fits(self) -> bool:
        return self.dwdp_gb <= self.capacity_gb

    @property
    def dep_fits(self) -> bool:
        return self.dep_gb <= self.capacity_gb


@dataclass(frozen=True)
class Scenario:
    """One deployment and workload.

    ranks: GPUs in the DWDP group (= the DEP group it is compared with), one NVLink domain.
    isl: request lengths; max_num_tokens: token budget of one iteration of one rank.
    iterations: iterations simulated per rank; seed: the workload's random seed.
    slots: prefetch slots (ping-pong is 2; layer l + slots - 1 is pulled while l computes).
    sliced: pulls cut into slices taken round-robin over the owners (upstream contention_opt);
        False pulls owner after owner in ascending rank order, so ranks can pile onto one owner.
    experts_per_rank: experts a rank holds; None spreads them evenly; more is redundant.
    count_scales: count block-scale bytes in expert weights (physical: True).
    chunked: fill every iteration to max_num_tokens, splitting the last request.
    max_batch_size: most requests in one iteration of one rank (None: only max_num_tokens binds).
    a2a: how DEP's all-to-all counts copies: "per-rank" (DeepEP-style, default) or
        "per-expert" (upstream's roofline); see dep.remote_copies.
    dep_model: DepModel.TUNED (default) or LEGACY.
    dep_packing: DepPacking of a TUNED DEP (default CHUNKED); LEGACY always packs as the scenario does.
    eplb: EPLB for DEP, as the runtime's `--eplb N`: N redundant expert slots per rank (0: off; True is 1),
        replicas of the hot experts placed by the runtime's eplb.eplb_placement from the layer's load.
    streams: PullStreams of unsliced pulls (default PER_SOURCE, as the runtime issues them).
    """

    machine: Machine
    model: MoEModel
    precision: Precision
    ranks: int
    isl: IslDist
    max_num_tokens: int
    iterations: int = 8
    seed: int = 0
    efficiency: Efficiency = field(default_factory=Efficiency)
    slots: int = 2
    sliced: bool = True
    experts_per_rank: Optional[int] = None
    count_scales: bool = True
    chunked: bool = False
    a2a: str = "per-rank"
    max_batch_size: Optional[int] = None
    dep_model: DepModel = DepModel.TUNED
    dep_packing: DepPacking = DepPacking.CHUNKED
    eplb: int = 0
    streams: PullStreams = PullStreams.PER_SOURCE

    def __post_init__(self):
        m = self.machine
        check_precision(m, self.precision.name)
        if self.ranks < 2:
            raise ValueError(f"--ranks {self.ranks}: DWDP and DEP need at least 2 ranks. Fix: --ranks 4 or more.")
        if self.ranks > m.domain:
            raise ValueError(f"--ranks {self.ranks}: {m.name} has {m.domain} GPUs per NVLink domain. "
                             f"Fix: --ranks <= {m.domain}, or --machine gb200 (72).")
        if self.ranks > self.model.experts:
            raise ValueError(f"--ranks {self.ranks}: more ranks than {self.model.name}'s {self.model.experts} experts. "
                             f"Fix: --ranks <= {self.model.experts}.")
        if self.max_num_tokens < 1:
            raise ValueError(f"--max-num-tokens {self.max_num_tokens}: must be >= 1. Fix: e.g. 16384.")
        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise ValueError(f"--max-batch-size {self.max_batch_size}: must be >= 1. Fix: e.g. 1, or leave it out.")
        if self.iterations < 1:
            raise ValueError(f"--iterations {self.iterations}: must be >= 1. Fix: e.g. 8.")
        if self.slots < 2:
            raise ValueError(f"--slots {self.slots}: DWDP needs >= 2 prefetch slots (ping-pong). Fix: --slots 2.")
        if self.a2a not in A2A_KINDS:
            raise ValueError(f"--a2a {self.a2a!r}: unknown. Fix: use one of {', '.join(A2A_KINDS)}.")
        for name, opt, enum in (("dep_model", "--dep-model", DepModel), ("streams", "--pull-streams", PullStreams),
                                ("dep_packing", "--dep-packing", DepPacking)):
            try:
                object.__setattr__(self, name, enum(getattr(self, name)))
            except ValueError:
                raise ValueError(f"{opt} {getattr(self, name)!r}: unknown. "
                                 f"Fix: use one of {', '.join(x.value for x in enum)}.") from None
        per = -(-self.model.experts // self.ranks)
        if isinstance(self.eplb, bool) or not isinstance(self.eplb, int):
            object.__setattr__(self, "eplb", DEFAULT_EPLB_REDUNDANT if self.eplb is True else int(self.eplb or 0))
        if not 0 <= self.eplb <= self.model.experts - per:
            raise ValueError(f"--eplb {self.eplb}: redundant slots per rank must be 0 to {self.model.experts - per} "
                             f"({self.model.name}: {self.model.experts} experts, {per} per rank). "
                             f"Fix: e.g. --eplb {DEFAULT_EPLB_REDUNDANT}, or leave it out.")
        e = self.experts_per_rank
        if e is not None and not (self.model.experts / self.ranks <= e <= self.model.experts):
            lo = -(-self.model.experts // self.ranks)
            raise ValueError(f"--experts-per-rank {e}: {self.ranks} ranks x {e} cannot cover {self.model.experts} "
                             f"experts. Fix: {lo} <= --experts-per-rank <= {self.model.experts}.")

    @cached_property
    def rates(self) -> Rates:
        return Rates.of(self.machine, self.efficiency)

    @cached_property
    def placement(self) -> Placement:
        if self.experts_per_rank is None:
            return even_placement(self.model.experts, self.ranks)
        return redundant_placement(self.model.experts, self.ranks, self.experts_per_rank)

    @cached_property
    def expert_bytes(self) -> float:
        """Bytes of one routed expert."""
        return self.precision.expert_bytes(self.model, self.count_scales)

    @cached_property
    def pull_sources(self) -> Tuple[Dict[int, int], ...]:
        """For each rank: owner -> experts it pulls from that owner per layer."""
        return tuple(fetch_plan(self.placement, r).pulls_per_source() for r in range(self.ranks))

    def fetch_bytes(self, rank: int) -> float:
        """Bytes rank pulls per MoE layer."""
        return sum(self.pull_sources[rank].values()) * self.expert_bytes

    def memory(self) -> MemoryFit:
        md, p = self.model, self.precision
        proj = sum(n * nbytes for n, _, nbytes in p.projections(md.attention))
        dense = (md.layers * proj + (md.moe_layers * (md.shared * 3 * md.hidden * md.moe_inter)
                 + md.dense_layers * 3 * md.hidden * md.dense_inter) * p.dense_bytes + 2 * md.vocab * md.hidden * 2)
        local = max(len(x) for x in self.placement.ranks) * md.moe_layers * self.expert_bytes
        slots = self.slots * self.placement.max_missing * self.expert_bytes
        dep = (-(-md.experts // self.ranks) + self.eplb) * md.moe_layers * self.expert_bytes
        return MemoryFit((dense + local + slots) / 1e9, (dense + dep) / 1e9, self.machine.hbm_gb)

    def describe(self) -> str:
        return (f"{self.machine.title}: {self.ranks} ranks | {self.model.name} {self.precision.name} | "
                f"ISL {self.isl} | max_num_tokens {self.max_num_tokens} | DEP {self.dep_model.value}"
                f"{f' + EPLB ({self.eplb} redundant per rank)' if self.eplb else ''}")
