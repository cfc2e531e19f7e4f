"""Closed-form views: the batch-1 roofline, one MoE layer's budget, and the crossover.

These assume every rank runs the same batch (no imbalance), so DEP loses nothing to its
barrier and DWDP's steady state per MoE layer is max(compute, pull): with >= 2 slots the pull
of layer l+1 runs while layer l computes, and one copy stream pulls one layer at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

from .batches import pack
from .costs import Chunk, dense_layer_cost, moe_layer_cost
from .dep import a2a_s, dep_expert_s
from .machines import Efficiency, Machine, Rates
from .models import MoEModel, Precision
from .scenario import Scenario


@dataclass(frozen=True)
class LayerBudget:
    """One MoE layer of one rank, all ranks alike, `tokens` tokens per rank per iteration (s).

    DWDP: compute_s = local + every expert the tokens touch (at full speed); fetch_s = the
      missing experts' bytes / link. Compute runs 1/(1+s) as fast while the pull is in flight
      (s = pull_slowdown), so the layer takes dwdp_s = max(fetch_s, compute_s + fetch_s*s/(1+s)).
    DEP: local + its E/N experts for the group's tokens + all-to-all (dispatch and combine).
    """

    tokens: int
    local_s: float
    dwdp_experts_s: float
    fetch_s: float
    dep_experts_s: float
    a2a_s: float
    pull_slowdown: float = 0.0

    @property
    def compute_s(self) -> float:
        return self.local_s + self.dwdp_experts_s

    @property
    def overlapped_compute_s(self) -> float:
        """Compute's wall time when the whole pull overlaps it (the compute-bound case)."""
        s = self.pull_slowdown
        return self.compute_s + self.fetch_s * s / (1 + s)

    @property
    def dwdp_s(self) -> float:
        return max(self.fetch_s, self.overlapped_compute_s)

    @property
    def dep_s(self) -> float:
        return self.local_s + self.dep_experts_s + self.a2a_s

    @property
    def window_over_fetch(self) -> float:
        return self.compute_s / self.fetch_s if self.fetch_s else math.inf


def homogeneous_batches(tokens: int, isl: float, most: int = 16) -> List[List[Chunk]]:
    """Iterations of exactly `tokens` tokens cut from a stream of requests of `isl` tokens by
    chunked prefill (at most `most` of them, evenly spaced), so chunk priors are averaged."""
    isl = max(1, int(round(isl)))
    n = 1 if tokens < isl else -(-4 * tokens // isl) + 1
    full = [list(b.chunks) for b in pack([isl] * n, tokens, chunked=True) if b.tokens == tokens]
    full = full or [[Chunk(tokens)]]
    return full[::max(1, len(full) // most)][:most]


def _budget(model: MoEModel, prec: Precision, rates: Rates, eff: Efficiency, ranks: int, chunks: List[Chunk],
            fetch_bytes: float, count_scales: bool, a2a: str) -> LayerBudget:
    c = moe_layer_cost(model, prec, rates, eff, chunks, count_scales)
    n = c.tokens
    return LayerBudget(n, c.local_s, c.moe_local_s, fetch_bytes / rates.link,
                       dep_expert_s(model, prec, rates, eff, n * ranks, ranks, count_scales),
                       a2a_s(model, prec, rates, eff, [n] * ranks, a2a), eff.pull_slowdown)


def layer_budget(scn: Scenario, tokens: int, isl: Optional[float] = None) -> LayerBudget:
    """Mean MoE-layer budget at `tokens` per rank per iteration, requests of `isl` (default the
    workload's mean ISL); the busiest rank's pull (uneven placements) is used for fetch_s."""
    fetch = max(scn.fetch_bytes(r) for r in range(scn.ranks))
    batches = homogeneous_batches(tokens, scn.isl.mean if isl is None else isl)
    bs = [_budget(scn.model, scn.precision, scn.rates, scn.efficiency, scn.ranks, b, fetch, scn.count_scales, scn.a2a)
          for b in batches]
    k = len(bs)
    return LayerBudget(tokens, sum(b.local_s for b in bs) / k, sum(b.dwdp_experts_s for b in bs) / k, bs[0].fetch_s,
                       sum(b.dep_experts_s for b in bs) / k, sum(b.a2a_s for b in bs) / k, scn.efficiency.pull_slowdown)


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
                    count_scales: bool = True, a2a: str = "per-expert") -> Roofline:
    """docs/DESIGN.md §2's batch-1 roofline: datasheet peaks (Efficiency.roofline()), no latency,
    all-to-all counted per expert as upstream does (a2a="per-rank" for DeepEP-style kernels).
    T_DWDP = max(T_compute, T_prefetch); T_DEP = local + E/N experts + all-to-all."""
    eff = Efficiency.roofline()
    rates = Rates.of(machine, eff)
    missing = model.experts - model.experts // ranks
    b = _budget(model, prec, rates, eff, ranks, [Chunk(isl)], missing * prec.expert_bytes(model, count_scales),
                count_scales, a2a)
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
    """(DWDP, DEP) seconds of one iteration of the whole model, homogeneous ranks. DWDP's copy
    stream pulls MoE layers back to back, so dense layers hide behind it when fetch-bound:
    max(M * fetch, dense + M * overlapped compute)."""
    b = layer_budget(scn, tokens, isl)
    batches = homogeneous_batches(tokens, scn.isl.mean if isl is None else isl)
    dense = sum(dense_layer_cost(scn.model, scn.precision, scn.rates, scn.efficiency, c).local_s
                for c in batches) / len(batches)
    d = scn.model.dense_layers * dense
    m = scn.model.moe_layers
    return max(m * b.fetch_s, d + m * b.overlapped_compute_s), d + m * b.dep_s


def crossover(scn: Scenario, isl: Optional[float] = None, limit: int = 1 << 20) -> Crossover:
    """Bisection on tokens per rank per iteration (DWDP's advantage grows with the window)."""
    isl = scn.isl.mean if isl is None else isl

    def wins(t: int) -> bool:
        dwdp, dep = model_times(scn, t, isl)
        return dwdp <= dep

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

