"""Closed-form views: the batch-1 roofline, one MoE layer's budget, and the crossover.

These assume every rank runs the same batch (no imbalance), so DEP loses nothing to its
barrier and DWDP's steady state per MoE layer is max(compute, pull): with >= 2 slots the pull
of layer l+1 runs while layer l computes, and one copy stream pulls one layer at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import List, Optional, Tuple

from .costs import Chunk, a2a_s, dense_layer_cost, dep_expert_s, moe_layer_cost
from .machines import Efficiency, Machine, Rates
from .models import MoEModel, Precision
from .scenario import Scenario


@dataclass(frozen=True)
class LayerBudget:
    """One MoE layer of one rank, all ranks alike, `tokens` tokens per rank per iteration (s).

    DWDP: compute_s = local + experts (slowed by pull_slowdown while the pull overlaps it);
      fetch_s = bytes / link; dwdp_s = max(compute_s, fetch_s).
    DEP: local + its E/N experts for the group's tokens + all-to-all (dispatch and combine).
    """

    tokens: int
    local_s: float
    dwdp_experts_s: float
    fetch_s: float
    dep_experts_s: float
    a2a_s: float

    @property
    def compute_s(self) -> float:
        return self.local_s + self.dwdp_experts_s

    @property
    def dwdp_s(self) -> float:
        return max(self.compute_s, self.fetch_s)

    @property
    def dep_s(self) -> float:
        return self.local_s + self.dep_experts_s + self.a2a_s

    @property
    def window_over_fetch(self) -> float:
        return self.compute_s / self.fetch_s if self.fetch_s else math.inf


def homogeneous_chunks(tokens: int, isl: float) -> List[List[Chunk]]:
    """Batches of `tokens` tokens made of requests of length isl: whole requests when
    tokens >= isl, else the ceil(isl / tokens) chunks of one request (averaged over by callers)."""
    isl = max(1, int(round(isl)))
    if tokens >= isl:
        n, rest = divmod(tokens, isl)
        return [[Chunk(isl)] * n + ([Chunk(rest)] if rest else [])]
    return [[Chunk(min(tokens, isl - p), p)] for p in range(0, isl, tokens)]


def _budget(model: MoEModel, prec: Precision, rates: Rates, eff: Efficiency, ranks: int, chunks: List[Chunk],
            fetch_bytes: float, count_scales: bool) -> LayerBudget:
    c = moe_layer_cost(model, prec, rates, eff, chunks, count_scales)
    n = c.tokens
    return LayerBudget(n, c.local_s, c.moe_local_s * (1 + eff.pull_slowdown), fetch_bytes / rates.link,
                       dep_expert_s(model, prec, rates, eff, n * ranks, ranks, count_scales),
                       a2a_s(model, prec, rates, eff, [n] * ranks))


def layer_budget(scn: Scenario, tokens: int, isl: Optional[float] = None) -> LayerBudget:
    """Mean MoE-layer budget at `tokens` per rank per iteration, requests of `isl` (default the
    workload's mean ISL); the busiest rank's pull (uneven placements) is used for fetch_s."""
    fetch = max(scn.fetch_bytes(r) for r in range(scn.ranks))
    batches = homogeneous_chunks(tokens, scn.isl.mean if isl is None else isl)
    bs = [_budget(scn.model, scn.precision, scn.rates, scn.efficiency, scn.ranks, b, fetch, scn.count_scales)
          for b in batches]
    k = len(bs)
    return LayerBudget(tokens, sum(b.local_s for b in bs) / k, sum(b.dwdp_experts_s for b in bs) / k, bs[0].fetch_s,
                       sum(b.dep_experts_s for b in bs) / k, sum(b.a2a_s for b in bs) / k)


@dataclass(frozen=True)
class Roofline:
    """Batch-1 roofline of one MoE layer: each rank runs one request of `isl` tokens (s)."""

    isl: int
    compute_s: float
    prefetch_s: float
    dwdp_s: float
    dep_s: float

    @property
    def compute_over_prefetch(self) -> float:
        return self.compute_s / self.prefetch_s

    @property
    def dep_over_dwdp(self) -> float:
        return self.dep_s / self.dwdp_s


def roofline_batch1(machine: Machine, model: MoEModel, prec: Precision, ranks: int, isl: int,
                    count_scales: bool = True) -> Roofline:
    """DESIGN.md §2's batch-1 roofline: datasheet peaks (Efficiency.roofline()), no latency.
    T_DWDP = max(T_compute, T_prefetch); T_DEP = local + E/N experts + all-to-all."""
    eff = Efficiency.roofline()
    rates = Rates.of(machine, eff)
    missing = model.experts - model.experts // ranks
    b = _budget(model, prec, rates, eff, ranks, [Chunk(isl)], missing * prec.expert_bytes(model, count_scales),
                count_scales)
    return Roofline(isl, b.compute_s, b.fetch_s, b.dwdp_s, b.dep_s)


@dataclass(frozen=True)
class Crossover:
    """Smallest tokens per rank per iteration at which DWDP's model time <= DEP's (whole model,
    dense layers included), with requests of `isl` tokens; None if not below `limit`."""

    tokens: Optional[int]
    isl: float
    limit: int
    reason: str


def model_times(scn: Scenario, tokens: int, isl: Optional[float] = None) -> Tuple[float, float]:
    """(DWDP, DEP) seconds of one iteration of the whole model, homogeneous ranks."""
    b = layer_budget(scn, tokens, isl)
    batches = homogeneous_chunks(tokens, scn.isl.mean if isl is None else isl)
    dense = sum(dense_layer_cost(scn.model, scn.precision, scn.rates, c).local_s for c in batches) / len(batches)
    d = scn.model.dense_layers * dense
    return d + scn.model.moe_layers * b.dwdp_s, d + scn.model.moe_layers * b.dep_s


def crossover(scn: Scenario, isl: Optional[float] = None, limit: int = 1 << 20) -> Crossover:
    """Bisection on tokens per rank per iteration (DWDP's advantage grows with the window)."""
    isl = scn.isl.mean if isl is None else isl
    wins = lambda t: (lambda d: d[0] <= d[1])(model_times(scn, t, isl))  # noqa: E731
    if wins(1):
        return Crossover(1, isl, limit, "DWDP is never slower: the pull hides even behind one token")
    if not wins(limit):
        dw, dp = model_times(scn, limit, isl)
        return Crossover(None, isl, limit, f"DWDP does not win below {limit} tokens per rank "
                                           f"(there it takes {dw / dp:.2f}x DEP's time)")
    lo, hi = 1, limit
    while hi - lo > max(1, lo // 200):
        mid = int(math.sqrt(lo * hi)) if hi > 4 * lo else (lo + hi) // 2
        lo, hi = (lo, mid) if wins(mid) else (mid, hi)
    return Crossover(hi, isl, limit, f"DWDP wins from ~{hi} tokens per rank per iteration "
                                     f"(requests of {int(isl)} tokens, no imbalance)")


def with_isl_mean(scn: Scenario, mean: float) -> Scenario:
    return replace(scn, isl=replace(scn.isl, mean=mean))
