"""One layer's time on one rank, counted from FLOPs and bytes (a roofline per operation).

Every operation takes max(FLOPs / rate, bytes / HBM bandwidth) at the rates of `Rates`
(datasheet x Efficiency). Times are seconds, sizes bytes. Elementwise work (norms, RoPE,
activation, routing softmax) is left out: it is a few percent of a prefill layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .machines import Efficiency, Rates
from .models import MoEModel, Precision

ACT_BYTES = 2  # BF16 activations between kernels


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


def attention_s(model: MoEModel, prec: Precision, rates: Rates, chunks: Sequence[Chunk]) -> float:
    """Attention of one layer for a batch of chunks: q/k/v/o projections (dense precision,
    weights read once) plus core attention in BF16 (QK^T and PV: 2 * heads * (qk + v) FLOPs
    per causal pair; reads the prior KV cache)."""
    a = model.attention
    tokens = sum(c.tokens for c in chunks)
    if tokens == 0:
        return 0.0
    act = 2 * tokens * model.hidden * ACT_BYTES
    proj = gemm_s(2.0 * tokens * a.proj_params, a.proj_params * prec.dense_bytes + act,
                  rates.flops_of(prec.dense_compute), rates)
    pairs = sum(c.pairs for c in chunks)
    kv = sum(c.prior + c.tokens for c in chunks) * a.kv_bytes_per_token
    core = gemm_s(2.0 * a.heads * (a.qk_dim + a.v_dim) * pairs, kv, rates.flops_of("bf16"), rates)
    return proj + core


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
    return t / eff.grouped_at(assignments / max(experts_read, 1e-9))


@dataclass(frozen=True)
class LayerCost:
    """Per-layer times (s) of one rank's batch.

    local_s: work that never leaves the rank: attention, plus shared expert and router on a MoE
        layer, or the dense FFN on a dense layer.
    moe_local_s: the routed experts computed locally for the rank's own tokens (DWDP: every
        expert the tokens touch, weights read from HBM after the pull).
    tokens: tokens in the batch.
    """

    local_s: float
    moe_local_s: float
    tokens: int


def moe_layer_cost(model: MoEModel, prec: Precision, rates: Rates, eff: Efficiency, chunks: Sequence[Chunk],
                   count_scales: bool = True) -> LayerCost:
    tokens = sum(c.tokens for c in chunks)
    local = (attention_s(model, prec, rates, chunks) + ffn_s(model, prec, rates, tokens, model.shared * model.moe_inter)
             + router_s(model, rates, tokens))
    touched = experts_touched(model.experts, model.top_k, tokens)
    return LayerCost(local, grouped_s(model, prec, rates, eff, tokens * model.top_k, touched, count_scales), tokens)


def dense_layer_cost(model: MoEModel, prec: Precision, rates: Rates, chunks: Sequence[Chunk]) -> LayerCost:
    tokens = sum(c.tokens for c in chunks)
    return LayerCost(attention_s(model, prec, rates, chunks) + ffn_s(model, prec, rates, tokens, model.dense_inter),
                     0.0, tokens)


def dep_expert_s(model: MoEModel, prec: Precision, rates: Rates, eff: Efficiency, group_tokens: int, ranks: int,
                 count_scales: bool = True) -> float:
    """DEP: one rank's routed experts (E / ranks of them) for the whole group's tokens, routed
    uniformly (an EPLB-balanced load): group_tokens * top_k / ranks assignments."""
    assignments = group_tokens * model.top_k / ranks
    held = model.experts / ranks
    touched = held * (1.0 - (1.0 - 1.0 / held) ** assignments) if assignments else 0.0
    return grouped_s(model, prec, rates, eff, assignments, touched, count_scales)


A2A_KINDS = ("per-rank", "per-expert")


def remote_copies(model: MoEModel, ranks: int, a2a: str = "per-rank") -> float:
    """Copies of one token a DEP layer sends to other ranks (expected, uniform routing).

    per-expert: one per routed expert on another rank, top_k * (N-1)/N. This is what upstream's
        batch-1 roofline counts (DESIGN.md §2's T_DEP/T_DWDP reproduce only this way).
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


def a2a_s(model: MoEModel, prec: Precision, rates: Rates, eff: Efficiency, rank_tokens: Sequence[int],
          a2a: str = "per-rank") -> float:
    """Dispatch + combine of one layer: the busiest rank's bytes (sent or received, whichever
    is more) over its NVLink direction, plus two fixed latencies. Rank r sends
    tokens_r * c copies (c = remote_copies) and receives (sum of the others' tokens) * c / (N-1)."""
    n = len(rank_tokens)
    total = sum(rank_tokens)
    c = remote_copies(model, n, a2a)
    per_copy = model.hidden * (prec.dispatch_bytes + prec.combine_bytes)
    busiest = max(max(t, (total - t) / (n - 1)) for t in rank_tokens) * c
    return busiest * per_copy / rates.link + 2 * eff.a2a_latency_us * 1e-6
