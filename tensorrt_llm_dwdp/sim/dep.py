"""DEP's own costs on one rank: its share of the routed experts, the expert load the routers and the
placement give each rank, and the all-to-all (one row per (token, destination rank), dispatch rows
quantised with their scales, combine rows in BF16). Times are seconds, sizes bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from ..eplb import contiguous_slots, eplb_placement, imbalance
from ..workloads.popularity import expert_shares
from .costs import Breakdown, elementwise_bytes, elementwise_s, grouped_s
from .machines import Efficiency, Rates
from .models import MoEModel, Precision


def dep_expert_s(model: MoEModel, prec: Precision, rates: Rates, eff: Efficiency, group_tokens: int, ranks: int,
                 count_scales: bool = True, load: float = 1.0) -> float:
    """DEP: one rank's routed experts (E / ranks of them) for the whole group's tokens, with its
    elementwise work; `load` is the rank's share of the assignments over the mean share (1.0:
    uniform routing): group_tokens * top_k / ranks * load assignments."""
    return dep_expert_parts(model, prec, rates, eff, group_tokens, ranks, count_scales, load).compute


def dep_expert_parts(model: MoEModel, prec: Precision, rates: Rates, eff: Efficiency, group_tokens: int, ranks: int,
                     count_scales: bool = True, load: float = 1.0, held: Optional[float] = None) -> Breakdown:
    """As dep_expert_s, by category; `held`: experts whose rows the rank computes (default E / ranks;
    EPLB adds replicas)."""
    assignments = group_tokens * model.top_k / ranks * load
    held = model.experts / ranks if held is None else held
    touched = held * (1.0 - (1.0 - 1.0 / held) ** assignments) if assignments and held >= 1 else 0.0
    # permute/SwiGLU/quantize/combine run on the expert rank (combine's per-token write is the source's)
    return Breakdown(grouped=grouped_s(model, prec, rates, eff, assignments, touched, count_scales),
                     other=elementwise_s(elementwise_bytes(model, 0, assignments, True), rates, eff))


@dataclass(frozen=True)
class LayerLoad:
    """One MoE layer's expert load over the DEP ranks.

    shares[r]: rank r's share of the layer's assignments (sums to 1).
    held[r]: experts rank r computes rows of (its active replicas).
    hits[r]: probability that a token has at least one of its top-k experts on rank r, i.e. the
        rows rank r receives per token of another rank (one row per (token, destination rank)).
    """

    shares: Tuple[float, ...]
    held: Tuple[float, ...]
    hits: Tuple[float, ...]

    @property
    def loads(self) -> List[float]:
        """Each rank's share over the mean share."""
        return [x * len(self.shares) for x in self.shares]

    @property
    def imbalance(self) -> float:
        return imbalance(self.shares)


def _hit(share: float, held: float, experts: int, top_k: int) -> float:
    """P(at least one of a token's top_k distinct experts is among `held` experts carrying `share`
    of the picks). Each pick removes one expert at the mean weight of the pool it comes from, so
    uniform routing gives the exact hypergeometric 1 - C(E - held, k) / C(E, k)."""
    miss = 1.0
    rest = max(experts - held, 1e-9)
    for i in range(top_k):
        miss *= max(0.0, (1.0 - share - i * (1.0 - share) / rest) / (1.0 - i / experts))
    return 1.0 - miss


def uniform_load(model: MoEModel, ranks: int) -> LayerLoad:
    held = model.experts / ranks
    hit = _hit(1.0 / ranks, held, model.experts, model.top_k)
    return LayerLoad((1.0 / ranks,) * ranks, (held,) * ranks, (hit,) * ranks)


def layer_load(model: MoEModel, ranks: int, skew: float, rng, eplb_redundant: int = 0) -> LayerLoad:
    """One MoE layer under the runtime's routing statistics: expert popularity Zipf(skew) over a
    random order of the experts (workloads/popularity.py, what the runtime's routers are calibrated to), placed
    as the runtime places it: plain DEP's contiguous ranges (eplb.contiguous_slots), or EPLB's replicas
    from that load (eplb.eplb_placement, `eplb_redundant` extra slots per rank). Loads are the
    expected shares: at 4K+ assignments per expert, a measured step differs by ~2%."""
    e = model.experts
    if skew == 0 and not eplb_redundant:
        return uniform_load(model, ranks)
    share = expert_shares(rng.permutation(e).tolist(), skew)
    if eplb_redundant:
        placement = eplb_placement(share, ranks, -(-e // ranks) + eplb_redundant)
    elif e % ranks == 0:
        placement = contiguous_slots(e, ranks)
    else:  # no equal-slot placement: the even placement's ranges, rank r holding experts e with e // (E/N) == r
        per = e / ranks
        owner = [min(ranks - 1, int(x // per)) for x in range(e)]
        shares = [sum(share[x] for x in range(e) if owner[x] == r) for r in range(ranks)]
        held = [float(owner.count(r)) for r in range(ranks)]
        return LayerLoad(tuple(shares), tuple(held), tuple(_hit(s, h, e, model.top_k) for s, h in zip(shares, held)))
    shares = placement.rank_loads(share)
    per = placement.slots_per_rank
    held = [float(sum(1 for i in range(per) if r * per + i not in placement.spare)) for r in range(ranks)]
    return LayerLoad(tuple(shares), tuple(held), tuple(_hit(s, h, e, model.top_k) for s, h in zip(shares, held)))


A2A_KINDS = ("per-rank", "per-expert")


def remote_copies(model: MoEModel, ranks: int, a2a: str = "per-rank") -> float:
    """Copies of one token a DEP layer sends to other ranks (expected, uniform routing).

    per-expert: one per routed expert on another rank, top_k * (N-1)/N. This is what upstream's
        batch-1 roofline counts (docs/DESIGN.md §2's T_DEP/T_DWDP reproduce only this way).
    per-rank: one per other rank holding at least one of the token's experts, as DeepEP and
        wide-EP all-to-all kernels send (combine reduces on the expert rank first):
        (N-1) * (1 - C(E - E/N, k) / C(E, k)).
    """
    if a2a not in A2A_KINDS:
        raise ValueError(f"--a2a {a2a!r}: unknown. Fix: use one of {', '.join(A2A_KINDS)}.")
    n, e, k = ranks, model.experts, model.top_k
    if a2a == "per-expert":
        return k * (n - 1) / n
    held = e / n
    miss = 1.0
    for i in range(k):  # probability that none of k distinct experts is on one given rank
        miss *= max(0.0, (e - held - i) / (e - i))
    return (n - 1) * (1.0 - miss)


def a2a_rows(model: MoEModel, rank_tokens: Sequence[int], a2a: str = "per-rank",
             load: Optional[LayerLoad] = None) -> Tuple[List[float], List[float]]:
    """(rows each rank sends, rows each rank receives) in one direction of one layer (dispatch;
    combine sends the same rows back). per-rank: rank j sends tokens_j * sum over r != j of
    hits[r]; per-expert: tokens_j * top_k * (the other ranks' shares). `load`: None is uniform."""
    if a2a not in A2A_KINDS:
        raise ValueError(f"--a2a {a2a!r}: unknown. Fix: use one of {', '.join(A2A_KINDS)}.")
    n = len(rank_tokens)
    load = load or uniform_load(model, n)
    per_row = load.hits if a2a == "per-rank" else tuple(model.top_k * x for x in load.shares)
    total = sum(rank_tokens)
    sent = [t * (sum(per_row) - per_row[j]) for j, t in enumerate(rank_tokens)]
    received = [per_row[r] * (total - rank_tokens[r]) for r in range(n)]
    return sent, received


@dataclass(frozen=True)
class A2aTime:
    """One layer's all-to-all on its busiest rank (s): dispatch (quantised rows and their scales,
    Precision.dispatch_bytes per element) and combine (BF16 rows back), each with a fixed latency."""

    dispatch: float
    combine: float

    @property
    def total(self) -> float:
        return self.dispatch + self.combine


def a2a_parts(model: MoEModel, prec: Precision, rates: Rates, eff: Efficiency, rank_tokens: Sequence[int],
              a2a: str = "per-rank", load: Optional[LayerLoad] = None) -> A2aTime:
    """The busiest rank's rows (sent or received, whichever is more; a2a_rows) over its NVLink
    direction at the all-to-all's rate (Rates.a2a), once at the dispatch row size and once at the combine row size."""
    sent, received = a2a_rows(model, rank_tokens, a2a, load)
    rows = max(sent + received)
    lat = eff.a2a_latency_us * 1e-6
    return A2aTime(rows * model.hidden * prec.dispatch_bytes / rates.a2a_rate + lat,
                   rows * model.hidden * prec.combine_bytes / rates.a2a_rate + lat)


def a2a_s(model: MoEModel, prec: Precision, rates: Rates, eff: Efficiency, rank_tokens: Sequence[int],
          a2a: str = "per-rank", load: Optional[LayerLoad] = None) -> float:
    """Dispatch + combine of one layer (a2a_parts)."""
    return a2a_parts(model, prec, rates, eff, rank_tokens, a2a, load).total
