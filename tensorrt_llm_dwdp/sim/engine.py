"""Discrete-event model of N ranks, layer by layer, under DWDP and under DEP.

DWDP: each rank runs its own iterations back to back. Per MoE layer it computes the local
part (attention, shared expert, router), waits for its pull, then computes every expert its
tokens touch. One copy stream per rank pulls MoE layers in order; the pull of layer m starts
when layer m - slots has finished its experts (its slot is free). Pulls are fluid flows:
a flow is limited by its rank's NVLink ingress and by each source's NVLink egress, shared
max-min fairly among the flows reading that source (copy-engine contention). Compute runs
1 / (1 + pull_slowdown) as fast while its rank's pull is in flight.

DEP: ranks run iteration k together. Each MoE layer is a barrier: the group waits for the
slowest rank's local work, then dispatches, computes E/N experts for the group's tokens and
combines. Dense layers need no collective, so their imbalance lands on the first barrier.

Times are seconds, sizes bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .costs import LayerCost, a2a_s, dense_layer_cost, dep_expert_s, moe_layer_cost
from .scenario import Scenario
from .workload import Batch, rank_batches

MAX_COUPLED_RANKS = 16


@dataclass(frozen=True)
class ModeResult:
    """One mode over the whole run.

    tps_per_gpu: context tokens per second per GPU.  tokens: tokens processed by all ranks.
    time_s: per-rank wall time (DWDP: each rank's own; DEP: all equal the makespan).
    busy_frac: fraction of rank time spent computing; wait_frac: spent waiting (DWDP: for a
        pull; DEP: at barriers for slower ranks); comm_frac: DEP all-to-all (DWDP: 0).
    """

    mode: str
    tps_per_gpu: float
    tokens: int
    time_s: Tuple[float, ...]
    busy_frac: float
    wait_frac: float
    comm_frac: float


@dataclass(frozen=True)
class RankPlan:
    """One rank's work: per layer (dense layers merged into their MoE layer's local part)."""

    local_s: Tuple[float, ...]
    experts_s: Tuple[float, ...]
    tokens: int


def layer_costs(scn: Scenario, batch: Batch) -> Tuple[LayerCost, LayerCost]:
    """(dense layer, MoE layer) costs of one batch on one rank."""
    ch = batch.chunks
    return (dense_layer_cost(scn.model, scn.precision, scn.rates, ch),
            moe_layer_cost(scn.model, scn.precision, scn.rates, scn.efficiency, ch, scn.count_scales))


def rank_plan(scn: Scenario, batches: Sequence[Batch]) -> RankPlan:
    local, experts = [], []
    md = scn.model
    for b in batches:
        dense, moe = layer_costs(scn, b)
        local.append(md.dense_layers * dense.local_s + moe.local_s)
        experts.append(moe.moe_local_s)
        local.extend([moe.local_s] * (md.moe_layers - 1))
        experts.extend([moe.moe_local_s] * (md.moe_layers - 1))
    return RankPlan(tuple(local), tuple(experts), sum(b.tokens for b in batches))


@dataclass
class _Rank:
    """One DWDP rank's state. Compute: layer li in phase 0 (local), 1 (waiting for its pull),
    2 (experts) or 3 (done), `work` seconds left at full speed. Copy stream: pulls of layers
    [0, pull_next) were started, [0, pull_done) finished; `queue` holds the flows left of the
    current pull and `flow` the one in flight ([bytes left, source -> fraction])."""

    plan: RankPlan
    chunks_of: List[Tuple[float, Dict[int, float]]]  # one pull: (bytes, source -> fraction) in order
    li: int = 0
    phase: int = 0  # 0 local, 1 waiting for the pull, 2 experts, 3 done
    work: float = 0.0
    moe_done: int = 0
    pull_next: int = 0
    pull_done: int = 0
    queue: Optional[List[Tuple[float, Dict[int, float]]]] = None
    flow: Optional[List] = None  # [bytes left, weights]
    t_done: float = 0.0
    busy: float = 0.0
    wait: float = 0.0

    def step(self, slots: int, t: float) -> bool:
        """Zero-time transitions; True if anything changed."""
        changed = False
        n = len(self.plan.local_s)
        if self.flow is None and self.queue:
            self.flow = list(self.queue.pop(0))
            changed = True
        if self.flow is None and self.queue is not None and not self.queue:
            self.queue, self.pull_done, changed = None, self.pull_done + 1, True
        if self.queue is None and self.pull_next < n and self.pull_next < self.moe_done + slots:
            self.queue = [c for c in self.chunks_of if c[0] > 0]
            self.pull_next += 1
            changed = True
        if self.phase == 0 and self.work <= 1e-15:
            self.phase, changed = 1, True
        if self.phase == 1 and self.pull_done > self.li:
            self.phase, self.work, changed = 2, self.plan.experts_s[self.li], True
        if self.phase == 2 and self.work <= 1e-15:
            self.moe_done += 1
            self.li += 1
            changed = True
            if self.li == n:
                self.phase, self.t_done = 3, t
            else:
                self.phase, self.work = 0, self.plan.local_s[self.li]
        return changed


def _fair_rates(flows: List[Tuple[int, Dict[int, float]]], ingress: float, egress: float) -> List[float]:
    """Max-min fair rates (B/s) of flows (rank, source -> fraction): each flow <= ingress, each
    source's sum of rate * fraction <= egress (progressive filling)."""
    rate = [0.0] * len(flows)
    live = set(range(len(flows)))
    used: Dict[int, float] = {}
    level = 0.0
    while live:
        load: Dict[int, float] = {}
        for i in live:
            for s, w in flows[i][1].items():
                load[s] = load.get(s, 0.0) + w
        delta = ingress - level
        for s, ld in load.items():
            delta = min(delta, (egress - used.get(s, 0.0)) / ld)
        level += delta
        for s, ld in load.items():
            used[s] = used.get(s, 0.0) + delta * ld
        full = {s for s in load if used[s] >= egress * (1 - 1e-12)}
        for i in list(live):
            rate[i] = level
            if level >= ingress * (1 - 1e-12) or any(s in full for s in flows[i][1]):
                live.discard(i)
    return rate


def _run(ranks: List[_Rank], scn: Scenario, link: float) -> None:
    """Advance coupled ranks to completion (one rank alone when pulls cannot contend)."""
    slow, slots = scn.efficiency.pull_slowdown, scn.slots
    coupled = len(ranks) > 1
    t = 0.0
    while True:
        for r in ranks:
            while r.step(slots, t):
                pass
        active = [r for r in ranks if r.phase != 3]
        if not active:
            return
        flows = [r for r in ranks if r.flow is not None]
        rates = ([link] * len(flows) if not coupled
                 else _fair_rates([(i, r.flow[1]) for i, r in enumerate(flows)], link, link))
        dt = np.inf
        for r in active:
            if r.phase in (0, 2):
                dt = min(dt, r.work * (1 + slow if r.flow is not None else 1))
        for r, x in zip(flows, rates):
            dt = min(dt, r.flow[0] / x)
        if not np.isfinite(dt):
            raise RuntimeError("sim: deadlock (no compute and no pull can progress)")
        for r in active:
            if r.phase in (0, 2):
                f = 1 / (1 + slow) if r.flow is not None else 1.0
                r.work = max(0.0, r.work - dt * f) if r.work > dt * f * (1 + 1e-12) else 0.0
                r.busy += dt
            elif r.phase == 1:
                r.wait += dt
        for r, x in zip(flows, rates):
            left = r.flow[0] - dt * x
            if left <= r.flow[0] * 1e-12 + 1e-6:
                r.flow = None
            else:
                r.flow[0] = left
        t += dt


def _pull_chunks(scn: Scenario, rank: int) -> List[Tuple[float, Dict[int, float]]]:
    """One layer's pull as flows: sliced, one flow spread over owners in proportion to what
    each serves; unsliced, one flow per owner in ascending rank order."""
    src = scn.pull_sources[rank]
    total = sum(src.values())
    if total == 0:
        return []
    if scn.sliced:
        return [(total * scn.expert_bytes, {s: n / total for s, n in src.items()})]
    return [(n * scn.expert_bytes, {s: 1.0}) for s, n in sorted(src.items())]


def source_load(scn: Scenario) -> float:
    """Sliced pulls, every rank pulling at full ingress at once: the busiest source's demand
    as a multiple of its egress. <= 1 means pulls cannot contend and ranks are independent."""
    load: Dict[int, float] = {}
    for r in range(scn.ranks):
        total = sum(scn.pull_sources[r].values())
        for s, n in (scn.pull_sources[r].items() if total else ()):
            load[s] = load.get(s, 0.0) + n / total
    return max(load.values(), default=0.0)


def can_contend(scn: Scenario) -> bool:
    return not scn.sliced or source_load(scn) > 1.0 + 1e-9


def simulate_dwdp(scn: Scenario, plans: Sequence[RankPlan]) -> ModeResult:
    """Ranks coupled through source egress when pulls can contend and ranks <= 16; beyond
    that, sliced pulls run independently at link / source_load (NOTE: the bound where every
    rank pulls at once, which is the fetch-bound case where it matters)."""
    ranks = [_Rank(p, _pull_chunks(scn, i)) for i, p in enumerate(plans)]
    for r in ranks:
        r.work = r.plan.local_s[0]
    link = scn.rates.link
    if can_contend(scn) and scn.ranks <= MAX_COUPLED_RANKS:
        _run(ranks, scn, link)
    elif can_contend(scn) and not scn.sliced:
        raise ValueError(f"--no-slicing with --ranks {scn.ranks} simulates every per-owner copy. "
                         f"Fix: --ranks <= {MAX_COUPLED_RANKS}, or drop --no-slicing.")
    else:
        for r in ranks:
            _run([r], scn, link / max(1.0, source_load(scn)))
    times = tuple(r.t_done for r in ranks)
    total = sum(times)
    return ModeResult("dwdp", float(np.mean([p.tokens / t for p, t in zip(plans, times)])),
                      sum(p.tokens for p in plans), times, sum(r.busy for r in ranks) / total,
                      sum(r.wait for r in ranks) / total, 0.0)


def simulate_dep(scn: Scenario, batches: Sequence[Sequence[Batch]]) -> ModeResult:
    """Lockstep iterations; batches[r][k] is rank r's k-th iteration."""
    md, n = scn.model, scn.ranks
    m = md.moe_layers
    makespan = wait = comm = 0.0
    tokens = 0
    for k in range(len(batches[0])):
        costs = [layer_costs(scn, batches[r][k]) for r in range(n)]
        toks = [c[1].tokens for c in costs]
        tokens += sum(toks)
        first = [md.dense_layers * d.local_s + mo.local_s for d, mo in costs]
        rest = [mo.local_s for _, mo in costs]
        a2a = a2a_s(md, scn.precision, scn.rates, scn.efficiency, toks, scn.a2a) if m else 0.0
        experts = dep_expert_s(md, scn.precision, scn.rates, scn.efficiency, sum(toks), n, scn.count_scales)
        if m == 0:
            makespan += max(first)
            wait += sum(max(first) - x for x in first)
            continue
        makespan += max(first) + (m - 1) * max(rest) + m * (a2a + experts)
        wait += sum(max(first) - x for x in first) + (m - 1) * sum(max(rest) - x for x in rest)
        comm += m * a2a
    busy = 1.0 - wait / (n * makespan) - comm / makespan
    return ModeResult("dep", tokens / (n * makespan), tokens, (makespan,) * n, busy, wait / (n * makespan),
                      comm / makespan)


@dataclass(frozen=True)
class Run:
    """Both modes on the same requests: speedup = DWDP TPS/GPU / DEP TPS/GPU."""

    dwdp: ModeResult
    dep: ModeResult
    mean_tokens_per_iteration: float

    @property
    def speedup(self) -> float:
        return self.dwdp.tps_per_gpu / self.dep.tps_per_gpu


def workload(scn: Scenario) -> List[List[Batch]]:
    """Each rank's iterations, from its own seeded request stream (seed + rank)."""
    return [rank_batches(scn.isl, scn.max_num_tokens, scn.iterations, np.random.default_rng([scn.seed, r]),
                         scn.chunked, scn.max_batch_size) for r in range(scn.ranks)]


def simulate(scn: Scenario) -> Run:
    batches = workload(scn)
    plans = [rank_plan(scn, b) for b in batches]
    mean = sum(p.tokens for p in plans) / (scn.ranks * scn.iterations)
    return Run(simulate_dwdp(scn, plans), simulate_dep(scn, batches), mean)
