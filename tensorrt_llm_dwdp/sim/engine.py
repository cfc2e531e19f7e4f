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

from .costs import Breakdown, LayerCost, dense_layer_cost, ffn_s, moe_layer_cost
from .dep import a2a_parts, dep_expert_parts, layer_load
from .scenario import DepModel, DepPacking, PullStreams, Scenario
from .workload import Batch, rank_batches

MAX_COUPLED_RANKS = 16
# EPLB places each drawn layer with the runtime's eplb_placement, O(W^2 E) Python steps (~0.7 s at 64 ranks):
# at most this many layer draws, cycled over the MoE layers.
EPLB_LAYER_DRAWS = 8


@dataclass(frozen=True)
class ModeResult:
    """One mode over the whole run.

    tps_per_gpu: context tokens per second per GPU.  tokens: tokens processed by all ranks.
    time_s: per-rank wall time (DWDP: each rank's own; DEP: all equal the makespan).
    busy_frac: fraction of rank time spent computing; wait_frac: spent waiting (DWDP: for a
        pull; DEP: at barriers for slower ranks); comm_frac: DEP all-to-all (DWDP: 0).
    breakdown: seconds per iteration of one rank (mean over ranks and iterations), by category.
    iteration_s: mean wall time of one iteration of one rank.
    expert_imbalance: DEP: the busiest rank's expert load over the mean, averaged over MoE layers (the
        runtime's per-rank imbalance column); DWDP: 1.0 (each rank computes its own tokens' experts).
    """

    mode: str
    tps_per_gpu: float
    tokens: int
    time_s: Tuple[float, ...]
    busy_frac: float
    wait_frac: float
    comm_frac: float
    breakdown: Breakdown = Breakdown()
    iteration_s: float = 0.0
    expert_imbalance: float = 1.0


@dataclass(frozen=True)
class RankPlan:
    """One rank's work: per layer (dense layers merged into their MoE layer's local part), with
    jitter applied; `compute` is the same work by category (summed over the run)."""

    local_s: Tuple[float, ...]
    experts_s: Tuple[float, ...]
    tokens: int
    compute: Breakdown = Breakdown()


def layer_costs(scn: Scenario, batch: Batch) -> Tuple[LayerCost, LayerCost]:
    """(dense layer, MoE layer) costs of one batch on one rank."""
    ch = batch.chunks
    return (dense_layer_cost(scn.model, scn.precision, scn.rates, scn.efficiency, ch),
            moe_layer_cost(scn.model, scn.precision, scn.rates, scn.efficiency, ch, scn.count_scales))


def jitter(scn: Scenario, rank: int, mode: str, shape) -> np.ndarray:
    """Per-layer compute factors 1 + jitter * N(0, 1), clipped to [0.5, 1.5]; seeded by
    (seed, rank, mode) so both modes see independent but reproducible jitter."""
    if scn.efficiency.jitter == 0:
        return np.ones(shape)
    rng = np.random.default_rng([scn.seed, rank, 1 + ("dwdp", "dep").index(mode)])
    return np.clip(1.0 + scn.efficiency.jitter * rng.standard_normal(shape), 0.5, 1.5)


def rank_plan(scn: Scenario, batches: Sequence[Batch], rank: int = 0) -> RankPlan:
    local, experts = [], []
    md = scn.model
    total = Breakdown()
    for b in batches:
        dense, moe = layer_costs(scn, b)
        local.append(md.dense_layers * dense.local_s + moe.local_s)
        experts.append(moe.moe_local_s)
        local.extend([moe.local_s] * (md.moe_layers - 1))
        experts.extend([moe.moe_local_s] * (md.moe_layers - 1))
        total = total + dense.local.scaled(md.dense_layers) + (moe.local + moe.experts).scaled(md.moe_layers)
    j = jitter(scn, rank, "dwdp", (2, len(local)))
    local_j, experts_j = np.asarray(local) * j[0], np.asarray(experts) * j[1]
    # jitter moves time between ranks, not between categories: scale the categories to the jittered sum
    raw = sum(local) + sum(experts)
    total = total.scaled((local_j.sum() + experts_j.sum()) / raw if raw else 1.0)
    return RankPlan(tuple(local_j.tolist()), tuple(experts_j.tolist()), sum(b.tokens for b in batches), total)


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
    slow: float = 0.0  # compute slowdown while this rank's pull is in flight
    pulling: float = 0.0  # seconds with a pull in flight
    flows: Optional[List] = None  # PER_SOURCE unsliced: all per-owner flows of the current pull at once

    def step(self, slots: int, t: float) -> bool:
        """Zero-time transitions; True if anything changed."""
        changed = False
        n = len(self.plan.local_s)
        if self.flow is None and self.queue:
            self.flow = list(self.queue.pop(0)) + [t]  # [bytes left, weights, issue time]
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


def _fifo_rates(flows: List[Tuple[int, Dict[int, float], float]], ingress: float, egress: float) -> List[float]:
    """Unsliced copies: each source's copy engine serves its oldest copy (issue time, then rank)
    at full rate; the others wait in its queue. A copy is one source's, and is also bounded by
    its rank's ingress (the rank's other copies from other sources share it)."""
    rate = [0.0] * len(flows)
    head: Dict[int, int] = {}
    for i, (r, w, t0) in enumerate(flows):
        s = next(iter(w))
        if s not in head or (t0, r) < (flows[head[s]][2], flows[head[s]][0]):
            head[s] = i
    served: Dict[int, int] = {}
    for i in head.values():
        served[flows[i][0]] = served.get(flows[i][0], 0) + 1
    for i in head.values():
        rate[i] = min(egress, ingress / served[flows[i][0]])
    return rate


def _run(ranks: List[_Rank], scn: Scenario, link: float) -> None:
    """Advance coupled ranks to completion (one rank alone when pulls cannot contend)."""
    slots = scn.slots
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
        if not coupled:
            rates = [link] * len(flows)
        elif scn.sliced:
            rates = _fair_rates([(i, r.flow[1]) for i, r in enumerate(flows)], link, link)
        else:
            rates = _fifo_rates([(i, r.flow[1], r.flow[2]) for i, r in enumerate(flows)], link, link)
        dt = np.inf
        for r in active:
            if r.phase in (0, 2):
                dt = min(dt, r.work * (1 + r.slow if r.flow is not None else 1))
        for r, x in zip(flows, rates):
            if x > 0:
                dt = min(dt, r.flow[0] / x)
        if not np.isfinite(dt):
            raise RuntimeError("sim: deadlock (no compute and no pull can progress)")
        for r in active:
            if r.phase in (0, 2):
                f = 1 / (1 + r.slow) if r.flow is not None else 1.0
                r.work = max(0.0, r.work - dt * f) if r.work > dt * f * (1 + 1e-12) else 0.0
                r.busy += dt
            elif r.phase == 1:
                r.wait += dt
        for r, x in zip(flows, rates):
            r.pulling += dt
            left = r.flow[0] - dt * x
            if left <= r.flow[0] * 1e-12 + 1e-6:
                r.flow = None
            else:
                r.flow[0] = left
        t += dt


def _pull_chunks(scn: Scenario, rank: int) -> List[Tuple[float, Dict[int, float]]]:
    """One layer's pull as flows: sliced, one flow spread over owners in proportion to what
    each serves; unsliced on one stream, one flow per owner in ascending rank order; unsliced on
    a stream per source, the same per-owner copies all issued at once, starting with the owner
    after this rank (rank + 1, rank + 2, ...), as the runtime orders them."""
    src = scn.pull_sources[rank]
    total = sum(src.values())
    if total == 0:
        return []
    if scn.sliced:
        return [(total * scn.expert_bytes, {s: n / total for s, n in src.items()})]
    order = sorted(src.items())
    if scn.streams is PullStreams.PER_SOURCE:
        order = sorted(src.items(), key=lambda kv: (kv[0] - rank) % scn.ranks)
    return [(n * scn.expert_bytes, {s: 1.0}) for s, n in order]


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
    link = scn.rates.link
    for i, r in enumerate(ranks):
        r.work = r.plan.local_s[0]
        r.slow = scn.efficiency.slowdown_of_pull(scn.fetch_bytes(i) / link)
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
    its = scn.ranks * scn.iterations
    compute = sum((p.compute for p in plans), Breakdown())
    slowdown = sum(r.busy for r in ranks) - compute.compute
    bd = (compute + Breakdown(pull=sum(r.pulling for r in ranks), pull_wait=sum(r.wait for r in ranks),
                              slowdown=max(0.0, slowdown))).scaled(1.0 / its)
    return ModeResult("dwdp", float(np.mean([p.tokens / t for p, t in zip(plans, times)])),
                      sum(p.tokens for p in plans), times, sum(r.busy for r in ranks) / total,
                      sum(r.wait for r in ranks) / total, 0.0, bd, total / its)


def simulate_dep(scn: Scenario, batches: Sequence[Sequence[Batch]]) -> ModeResult:
    """Lockstep iterations; batches[r][k] is rank r's k-th iteration. Per MoE layer: barrier on
    the slowest rank's local work, dispatch, experts (each rank's share of the assignments set by
    the runtime's routing statistics and placements, dep.layer_load), combine after the slowest
    expert rank. TUNED hides the dispatch behind the shared expert (the combine is exposed); LEGACY
    exposes all of it."""
    md, n, eff = scn.model, scn.ranks, scn.efficiency
    m = md.moe_layers
    tuned = scn.dep_model is DepModel.TUNED
    rng = np.random.default_rng([scn.seed, 7])
    draws = min(max(m, 1), EPLB_LAYER_DRAWS) if scn.eplb else max(m, 1)
    drawn = [layer_load(md, n, eff.routing_skew, rng, scn.eplb) for _ in range(draws)]
    loads = [drawn[li % draws] for li in range(max(m, 1))]
    iters = len(batches[0])
    jit = [jitter(scn, r, "dep", (iters, 2, max(m, 1))) for r in range(n)]
    makespan = 0.0
    bd = Breakdown()
    tokens = 0
    for k in range(iters):
        costs = [layer_costs(scn, batches[r][k]) for r in range(n)]
        toks = [c[1].tokens for c in costs]
        tokens += sum(toks)
        group = sum(toks)
        # per rank, per MoE layer: local work (the first one carries the dense layers)
        local = np.array([[(md.dense_layers * d.local_s if li == 0 else 0.0) + mo.local_s for li in range(max(m, 1))]
                          for d, mo in costs]) * np.array([j[k, 0] for j in jit])
        local_bd = sum((d.local.scaled(md.dense_layers) + mo.local.scaled(m) for d, mo in costs), Breakdown())
        if m == 0:
            t = local.max(axis=0).sum()
            makespan += t
            bd = bd + local_bd + Breakdown(sync=float((local.max(axis=0) - local).sum()))
            continue
        # the dispatch overlaps the shared expert (its own stream, as DeepEP's hooks allow)
        hide = ffn_s(md, scn.precision, scn.rates, min(toks), md.shared * md.moe_inter) if tuned else 0.0
        expert_bd = Breakdown()
        t_iter = 0.0
        sync = comm = 0.0
        for li in range(m):
            ld = loads[li]
            parts = [dep_expert_parts(md, scn.precision, scn.rates, eff, group, n, scn.count_scales, x, h)
                     for x, h in zip(ld.loads, ld.held)]
            e = np.array([p.compute for p in parts]) * np.array([j[k, 1, li] for j in jit])
            a2a = a2a_parts(md, scn.precision, scn.rates, eff, toks, scn.a2a, ld)
            # the shared expert runs beside the dispatch only: the combine needs the experts' outputs
            exposed = max(0.0, a2a.dispatch - hide) + a2a.combine if tuned else a2a.total
            lmax = local[:, li].max()
            t_iter += lmax + exposed + e.max()
            sync += float((lmax - local[:, li]).sum() + (e.max() - e).sum())
            comm += n * exposed
            scale = e.sum() / sum(p.compute for p in parts)
            expert_bd = expert_bd + sum(parts, Breakdown()).scaled(scale)
        makespan += t_iter
        jl = local.sum() / sum(d.local.compute * md.dense_layers + mo.local.compute * m for d, mo in costs)
        bd = bd + local_bd.scaled(jl) + expert_bd + Breakdown(comm=comm, sync=sync)
    its = n * iters
    bd = bd.scaled(1.0 / its)
    wait, com = bd.sync * its, bd.comm * its
    busy = 1.0 - wait / (n * makespan) - com / (n * makespan)
    return ModeResult("dep", tokens / (n * makespan), tokens, (makespan,) * n, busy, wait / (n * makespan),
                      com / (n * makespan), bd, makespan / iters, float(np.mean([ld.imbalance for ld in loads])))


@dataclass(frozen=True)
class Run:
    """Both modes on the same requests: speedup = DWDP TPS/GPU / DEP TPS/GPU."""

    dwdp: ModeResult
    dep: ModeResult
    mean_tokens_per_iteration: float

    @property
    def speedup(self) -> float:
        return self.dwdp.tps_per_gpu / self.dep.tps_per_gpu


def workload(scn: Scenario, chunked: Optional[bool] = None) -> List[List[Batch]]:
    """Each rank's iterations, from its own seeded request stream (seed + rank); `chunked`
    overrides the scenario's packing (a tuned DEP packs chunked unless its dep_packing says SAME)."""
    chunked = scn.chunked if chunked is None else chunked
    return [rank_batches(scn.isl, scn.max_num_tokens, scn.iterations, np.random.default_rng([scn.seed, r]),
                         chunked, scn.max_batch_size) for r in range(scn.ranks)]


def simulate(scn: Scenario) -> Run:
    batches = workload(scn)
    plans = [rank_plan(scn, b, r) for r, b in enumerate(batches)]
    mean = sum(p.tokens for p in plans) / (scn.ranks * scn.iterations)
    chunk = scn.dep_model is DepModel.TUNED and scn.dep_packing is DepPacking.CHUNKED and not scn.chunked
    dep_batches = workload(scn, True) if chunk else batches
    return Run(simulate_dwdp(scn, plans), simulate_dep(scn, dep_batches), mean)
