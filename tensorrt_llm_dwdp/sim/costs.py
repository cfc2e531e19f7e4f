"""One layer's time on one rank, counted from FLOPs and bytes (a roofline per operation).

Every GEMM takes max(FLOPs / rate, bytes / HBM bandwidth) at the rates of `Rates` (datasheet x
Efficiency); grouped GEMMs are further divided by their efficiency at their rows per expert.
Elementwise work (norms, RoPE, activation, routing, permute, quantize, residual adds) takes the
bytes it moves over HBM at Efficiency.elementwise. Every time is kept by category (`Breakdown`).
Times are seconds, sizes bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import List, Optional, Sequence, Tuple

from ..eplb import contiguous_slots, eplb_placement, imbalance
from ..popularity import expert_shares
from .machines import Efficiency, Rates
from .models import MoEModel, Precision

ACT_BYTES = 2  # BF16 activations between kernels


@dataclass(frozen=True)
class Breakdown:
    """Seconds by category, summed over whatever was added (one layer, one rank's run, ...).

    attention: core attention (QK^T, softmax, PV).  grouped: routed experts' grouped GEMMs.
    dense: every other GEMM (q/k/v/o projections, shared expert, dense FFN, router).
    other: elementwise kernels (norms, RoPE, activation, routing, permute, quantize, residuals).
    comm: DEP all-to-all left exposed (dispatch + combine).  sync: waiting for slower ranks (DEP).
    pull: DWDP pull time in flight (overlaps compute; not part of the rank's time by itself).
    pull_wait: DWDP time waiting for a pull that compute did not hide (exposed).
    slowdown: extra compute time from copies running concurrently (DWDP).
    """

    attention: float = 0.0
    grouped: float = 0.0
    dense: float = 0.0
    other: float = 0.0
    comm: float = 0.0
    sync: float = 0.0
    pull: float = 0.0
    pull_wait: float = 0.0
    slowdown: float = 0.0

    def __add__(self, o: "Breakdown") -> "Breakdown":
        return Breakdown(*(getattr(self, f.name) + getattr(o, f.name) for f in fields(self)))

    def scaled(self, k: float) -> "Breakdown":
        return Breakdown(*(getattr(self, f.name) * k for f in fields(self)))

    @property
    def compute(self) -> float:
        return self.attention + self.grouped + self.dense + self.other

    @property
    def wall(self) -> float:
        """Rank time these categories take one after another (pull overlaps, so it is not counted)."""
        return self.compute + self.comm + self.sync + self.pull_wait + self.slowdown


@dataclass(frozen=True)
class Chunk:
    """`tokens` new tokens of one request whose first `prior` tokens are already in the KV cache."""

    tokens: int
    prior: int = 0

    @property
    def pairs(self) -> int:
        """Causal query-key pairs: sum over new tokens i of (prior + i + 1)."""
        return self.tokens * self.prior + self.tokens * (self.tokens + 1) // 2


def gemm_s(flops: float, nbytes: float, rate_flops: float, rates: Rates) -> float:
    return max(flops / rate_flops, nbytes / rates.hbm)


def attention_parts(model: MoEModel, prec: Precision, rates: Rates, chunks: Sequence[Chunk]) -> Breakdown:
    """Attention of one layer for a batch of chunks: q/k/v/o projections (each in its precision,
    Precision.projections; weights read once; `dense`) plus core attention in BF16 (QK^T and PV: 2 * heads * (qk + v)
    FLOPs per causal pair; reads the prior KV cache; `attention`)."""
    a = model.attention
    tokens = sum(c.tokens for c in chunks)
    if tokens == 0:
        return Breakdown()
    act = 2 * tokens * model.hidden * ACT_BYTES
    proj = sum(gemm_s(2.0 * tokens * n, n * nbytes + act * n / a.proj_params, rates.flops_of(compute), rates)
               for n, compute, nbytes in prec.projections(a) if n)
    pairs = sum(c.pairs for c in chunks)
    kv = sum(c.prior + c.tokens for c in chunks) * a.kv_bytes_per_token
    core = gemm_s(2.0 * a.heads * (a.qk_dim + a.v_dim) * pairs, kv, rates.flops_of("bf16"), rates)
    return Breakdown(attention=core, dense=proj)


def elementwise_bytes(model: MoEModel, tokens: float, assignments: float, moe: bool) -> float:
    """Bytes elementwise kernels move in one layer (BF16 activations, read + write):
    two RMSNorms and two residual adds per token (read + write hidden each: 2 + 2 + 3 + 3 passes),
    RoPE and the q/k/v staging (about one more read + write of q, k, v), and
      MoE: router softmax/top-k (fp32 logits), permute (read + write hidden per assignment),
      SwiGLU (read 2 x inter, write inter per assignment), quantize of the expert inputs (read +
      write hidden per assignment), combine (read hidden per assignment, write hidden per token);
      shared experts' SwiGLU per token;
      dense: the FFN's SwiGLU per token."""
    h, b = model.hidden, ACT_BYTES
    a = model.attention
    per_token = 10 * h * b + 2 * a.heads * (a.qk_dim + a.v_dim) * b
    if not moe:
        return tokens * (per_token + 3 * model.dense_inter * b)
    per_token += 2 * model.experts * 4 + h * b + 3 * model.shared * model.moe_inter * b
    per_assignment = 2 * h * b + 3 * model.moe_inter * b + 2 * h * b + h * b
    return tokens * per_token + assignments * per_assignment


def elementwise_s(nbytes: float, rates: Rates, eff: Efficiency) -> float:
    if eff.roofline_like:
        return 0.0  # the upstream roofline counts GEMMs and bytes of weights only
    return nbytes / (rates.hbm / eff.hbm * eff.elementwise)


def ffn_s(model: MoEModel, prec: Precision, rates: Rates, tokens: int, inter: int) -> float:
    """A dense SwiGLU FFN (or shared expert) of width `inter` on `tokens` tokens."""
    if tokens == 0 or inter == 0:
        return 0.0
    params = 3 * model.hidden * inter
    return gemm_s(2.0 * tokens * params, params * prec.dense_bytes + 2 * tokens * model.hidden * ACT_BYTES,
                  rates.flops_of(prec.dense_compute), rates)


def router_s(model: MoEModel, rates: Rates, tokens: int) -> float:
    """The gate GEMM (hidden x experts, BF16)."""
    return gemm_s(2.0 * tokens * model.hidden * model.experts, model.hidden * model.experts * 2, rates.flops_of("bf16"),
                  rates) if tokens else 0.0


def experts_touched(experts: int, top_k: int, tokens: int) -> float:
    """Expected distinct experts hit by `tokens` tokens routed uniformly, top_k each."""
    if tokens <= 0:
        return 0.0
    return experts * (1.0 - (1.0 - top_k / experts) ** tokens)


def grouped_s(model: MoEModel, prec: Precision, rates: Rates, eff: Efficiency, assignments: float,
              experts_read: float, count_scales: bool = True) -> float:
    """Routed experts' grouped GEMMs: `assignments` (token, expert) pairs over `experts_read`
    experts whose weights are read from HBM once. Divided by the calibrated grouped-GEMM
    efficiency at assignments / experts_read tokens per expert."""
    if assignments <= 0:
        return 0.0
    flops = 6.0 * assignments * model.hidden * model.moe_inter
    nbytes = experts_read * prec.expert_bytes(model, count_scales) + 2 * assignments * model.hidden * ACT_BYTES
    t = gemm_s(flops, nbytes, rates.flops_of(prec.expert_compute), rates)
    return t / eff.grouped_at(assignments / max(experts_read, 1e-9), prec.expert_compute)


@dataclass(frozen=True)
class LayerCost:
    """Per-layer times (s) of one rank's batch, by category.

    local: work that never leaves the rank: attention, plus shared expert, router and the
        per-token elementwise work on a MoE layer, or the dense FFN on a dense layer.
    experts: the routed experts computed locally for the rank's own tokens (DWDP: every expert
        the tokens touch, weights read from HBM after the pull), with their elementwise work.
    tokens: tokens in the batch.
    """

    local: Breakdown
    experts: Breakdown
    tokens: int

    @property
    def local_s(self) -> float:
        return self.local.compute

    @property
    def moe_local_s(self) -> float:
        return self.experts.compute


def moe_layer_cost(model: MoEModel, prec: Precision, rates: Rates, eff: Efficiency, chunks: Sequence[Chunk],
                   count_scales: bool = True) -> LayerCost:
    tokens = sum(c.tokens for c in chunks)
    a = tokens * model.top_k
    local = attention_parts(model, prec, rates, chunks) + Breakdown(
        dense=ffn_s(model, prec, rates, tokens, model.shared * model.moe_inter) + router_s(model, rates, tokens),
        other=elementwise_s(elementwise_bytes(model, tokens, 0, True), rates, eff))
    touched = experts_touched(model.experts, model.top_k, tokens)
    experts = Breakdown(grouped=grouped_s(model, prec, rates, eff, a, touched, count_scales),
                        other=elementwise_s(elementwise_bytes(model, 0, a, True), rates, eff))
    return LayerCost(local, experts, tokens)


def dense_layer_cost(model: MoEModel, prec: Precision, rates: Rates, eff: Efficiency,
                     chunks: Sequence[Chunk]) -> LayerCost:
    tokens = sum(c.tokens for c in chunks)
    other = elementwise_s(elementwise_bytes(model, tokens, 0, False), rates, eff)
    local = attention_parts(model, prec, rates, chunks) + Breakdown(
        dense=ffn_s(model, prec, rates, tokens, model.dense_inter), other=other)
    return LayerCost(local, Breakdown(), tokens)


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
    random order of the experts (popularity.py, what the runtime's routers are calibrated to), placed
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
