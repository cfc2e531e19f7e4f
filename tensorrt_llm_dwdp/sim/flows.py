"""The DWDP ranks' event loop: per rank, compute phases layer by layer and one copy stream whose pulls are fluid
flows, limited by the rank's NVLink ingress and each source's egress (see engine's docstring for the model).

Times are seconds, sizes bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .costs import Breakdown
from .scenario import PullStreams, Scenario

MAX_COUPLED_RANKS = 16


@dataclass(frozen=True)
class RankPlan:
    """One rank's work: per layer (dense layers merged into their MoE layer's local part), with
    jitter applied; `compute` is the same work by category (summed over the run)."""

    local_s: Tuple[float, ...]
    experts_s: Tuple[float, ...]
    tokens: int
    compute: Breakdown = Breakdown()


@dataclass
class RankState:
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


def fair_rates(flows: List[Tuple[int, Dict[int, float]]], ingress: float, egress: float) -> List[float]:
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


def fifo_rates(flows: List[Tuple[int, Dict[int, float], float]], ingress: float, egress: float) -> List[float]:
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


def advance(ranks: List[RankState], scn: Scenario, link: float) -> None:
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
            rates = fair_rates([(i, r.flow[1]) for i, r in enumerate(flows)], link, link)
        else:
            rates = fifo_rates([(i, r.flow[1], r.flow[2]) for i, r in enumerate(flows)], link, link)
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


def pull_chunks(scn: Scenario, rank: int) -> List[Tuple[float, Dict[int, float]]]:
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


def run_dwdp(scn: Scenario, plans: Sequence[RankPlan]) -> List[RankState]:
    """Every rank's plan run to its end. Ranks are coupled through source egress when pulls can contend and
    ranks <= 16; beyond that, sliced pulls run independently at link / source_load (NOTE: the bound where every
    rank pulls at once, which is the fetch-bound case where it matters)."""
    ranks = [RankState(p, pull_chunks(scn, i)) for i, p in enumerate(plans)]
    link = scn.rates.link
    for i, r in enumerate(ranks):
        r.work = r.plan.local_s[0]
        r.slow = scn.efficiency.slowdown_of_pull(scn.fetch_bytes(i) / link)
    if can_contend(scn) and scn.ranks <= MAX_COUPLED_RANKS:
        advance(ranks, scn, link)
    elif can_contend(scn) and not scn.sliced:
        raise ValueError(f"--no-slicing with --ranks {scn.ranks} simulates every per-owner copy. "
                         f"Fix: --ranks <= {MAX_COUPLED_RANKS}, or drop --no-slicing.")
    else:
        for r in ranks:
            advance([r], scn, link / max(1.0, source_load(scn)))
    return ranks
