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
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .batches import Batch, rank_batches
from .costs import Breakdown, LayerCost, dense_layer_cost, ffn_s, moe_layer_cost
from .dep import a2a_parts, dep_expert_parts, layer_load
from .flows import RankPlan, run_dwdp
from .scenario import DepModel, DepPacking, Scenario
from ..workloads.popularity import default_skew

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


def simulate_dwdp(scn: Scenario, plans: Sequence[RankPlan]) -> ModeResult:
    ranks = run_dwdp(scn, plans)
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
    skew = default_skew(md.experts) if eff.routing_skew is None else eff.routing_skew
    drawn = [layer_load(md, n, skew, rng, scn.eplb) for _ in range(draws)]
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
