"""One layer's time on one rank, counted from FLOPs and bytes (a roofline per operation).

Every GEMM takes max(FLOPs / rate, bytes / HBM bandwidth) at the rates of `Rates` (datasheet x
Efficiency); grouped GEMMs are further divided by their efficiency at their rows per expert.
Elementwise work (norms, RoPE, activation, routing, permute, quantize, residual adds) takes the
bytes it moves over HBM at Efficiency.elementwise. Every time is kept by category (`Breakdown`).
Times are seconds, sizes bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

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
