"""A compact DeepSeek-architecture decoder for context-phase (prefill) work, in plain torch.

Models stay plain: every MoE block computes its routed experts through a `moe.layer.RoutedExperts`
(weight source x token exchange x expert kernel; all local by default); `apply_dwdp` and `apply_dep`
swap in DWDP's composite weights or DEP's all-to-all. Experts may be BF16 or FP8 e4m3 with DeepSeek-V3
128x128 block scales (`weight_dtype`).
Prefill runs on packed sequences: x is [T, H] with `seq_lens` summing to T; attention (`attention.py`) is
causal within each sequence.
"""

from __future__ import annotations

import functools
import math
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from ..config import WeightDtype, is_fp8
from ..moe import DeepSeekV3Routing, ExpertWeights, SoftmaxTopKRouting, make_router, swiglu
from ..moe.layer import LocalWeights, RoutedExperts
from ..moe.ops import quantize_weight_blocks
from ..moe.overlap import beside
from ..workloads.popularity import zipf_shares
from .attention import GqaAttention, MlaAttention, RMSNorm
from .model_config import AttentionKind, ModelConfig, Routing


class DenseMLP(nn.Module):
    def __init__(self, hidden: int, inter: int):
        super().__init__()
        self.w13 = nn.Parameter(torch.empty(2 * inter, hidden))
        self.w2 = nn.Parameter(torch.empty(hidden, inter))

    def forward(self, x):
        return swiglu(x, self.w13, self.w2)


def expert_normal_(stack: torch.Tensor, seed: int, layer_idx: int, which: int, experts: Sequence[int]) -> None:
    """Fill stack[i] with expert experts[i]'s N(0, 1/fan_in) weights from a seed of its own, so any
    subset of experts can be made on any rank without the others (per-device generators, as torch's)."""
    with torch.no_grad():
        for i, e in enumerate(experts):
            s = (((seed * 1_000_003 + layer_idx) * 4 + which) * 65_537 + int(e)) % (1 << 63)
            g = torch.Generator(device=stack.device).manual_seed(s)
            stack[i].normal_(0.0, 1.0 / math.sqrt(stack.shape[-1]), generator=g)


def router(c: ModelConfig):
    return make_router(c.routing.value, c.top_k, c.n_group, c.topk_group, c.routed_scaling, c.renormalize)


def zipf_selection_bias(c: ModelConfig, skew: float, seed: int, layer_idx: int) -> torch.Tensor:
    """[E] float32 router bias that makes expert popularity Zipf(skew) (the i-th most popular expert takes a share
    of the assignments proportional to 1/(i+1)^skew) over a seeded random order of the experts per layer: the
    simulator's routing model (workloads/popularity.py). A random model's router is otherwise as skewed as its random
    draws happen to make it. Softmax routers take it on the logits, DeepSeek's on the selection-only correction
    bias; its size is calibrated once per (router, skew) on iid logits (_popularity_bias)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + layer_idx) * 31 + 17)
    E = c.num_experts
    if c.routing is Routing.DEEPSEEK_V3 and c.n_group > 1:
        # Group-limited selection couples the experts of a group, so the bias depends on where the hot experts sit:
        # calibrate one seeded arrangement once, and give each layer that arrangement relabelled by a permutation
        # of the groups and of the experts within each group. On iid logits the router is symmetric under such a
        # relabelling, so the calibration holds for every layer (one calibration per model, not one per layer).
        per = E // c.n_group
        base = torch.randperm(E, generator=torch.Generator().manual_seed(seed * 7 + 3))
        bias = _popularity_bias(c.routing, E, c.top_k, c.n_group, c.topk_group, float(skew), tuple(base.tolist()))
        groups = torch.randperm(c.n_group, generator=g)
        within = torch.stack([torch.randperm(per, generator=g) for _ in range(c.n_group)])
        relabel = (groups[:, None] * per + within).reshape(-1)  # expert grp*per+pos -> groups[grp]*per+within[grp,pos]
        order = relabel[base]
    else:
        order = torch.randperm(E, generator=g)
        bias = _popularity_bias(c.routing, E, c.top_k, c.n_group, c.topk_group, float(skew), None)
    tilt = torch.empty(E)
    tilt[order] = torch.tensor(bias)
    return tilt


@functools.lru_cache(maxsize=256)
def _popularity_bias(routing: Routing, num_experts: int, top_k: int, n_group: int, topk_group: int,
                     skew: float, order: Optional[tuple]) -> tuple:
    """Bias by popularity rank whose top-k selection on iid N(0, 1) logits gives Zipf(skew) shares: steps on
    the measured shares, as DeepSeek's auxiliary-loss-free balancing steps its bias towards even ones (here
    towards the Zipf target). Clamped, shrinking steps: group-limited selection is discontinuous in the bias."""
    want = torch.tensor(zipf_shares(num_experts, skew), dtype=torch.float64)
    if skew == 0:
        return tuple([0.0] * num_experts)
    route = DeepSeekV3Routing(top_k, n_group, topk_group) if routing is Routing.DEEPSEEK_V3 else SoftmaxTopKRouting(top_k)
    logits = torch.randn(4096, num_experts, generator=torch.Generator().manual_seed(12345))
    # rank i's expert: order[i] (the layer's own order for grouped routing), else expert i
    where = torch.tensor(order) if order is not None else torch.arange(num_experts)
    bias = torch.zeros(num_experts)  # by popularity rank
    scale = 0.25 if routing is Routing.DEEPSEEK_V3 else 1.0  # score units (the sigmoid's slope at 0) or logit units
    steps = 60
    for i in range(steps):
        b = torch.empty(num_experts)
        b[where] = bias
        r = route(logits, b) if routing is Routing.DEEPSEEK_V3 else route(logits + b, torch.zeros(num_experts))
        got = torch.bincount(r.topk_ids.reshape(-1), minlength=num_experts).double()[where] + 0.5
        error = torch.log(want / (got / got.sum())).clamp(-1.0, 1.0)
        bias += (0.15 * scale * (1 - i / steps) * error).float()
        bias -= bias.mean()
    return tuple(bias.tolist())


class MoEBlock(nn.Module):
    """Router + routed experts + shared expert. The routed part goes through `self.experts` (a
    RoutedExperts: `routed(x, topk_ids, topk_weights, layer_idx) -> [T, H]`): all local, DWDP, or expert
    parallel; each fills the same slot. FP8 blocks hold e4m3 stacks with w13_scale / w2_scale."""

    def __init__(self, c: ModelConfig, layer_idx: int):
        super().__init__()
        self.c, self.layer_idx = c, layer_idx
        self.gate = nn.Parameter(torch.empty(c.num_experts, c.hidden))
        self.bias = nn.Parameter(torch.zeros(c.num_experts), requires_grad=False)
        self.w13 = nn.Parameter(torch.empty(c.num_experts, 2 * c.moe_inter, c.hidden))
        self.w2 = nn.Parameter(torch.empty(c.num_experts, c.hidden, c.moe_inter))
        self.shared = DenseMLP(c.hidden, c.shared_inter) if c.shared_inter else None
        self.experts = None  # set by Decoder.finish() or apply_dwdp
        self.w13_scale = self.w2_scale = None  # FP8: [E, 2I/128, H/128], [E, H/128, I/128] fp32
        self.lazy = None  # (seed, dtype, device) where the expert stacks are made per expert on demand
        self.weight_dtype = WeightDtype.BF16.value  # or FP8: experts quantized per 128x128 block
        self.route = router(c)
        self.logit_bias = None  # [E]: a softmax router's popularity tilt (set_routing_skew), None for none

    def expert_tensors(self, experts: Sequence[int]) -> Dict[str, torch.Tensor]:
        """w13, w2 (and w13_scale, w2_scale for FP8) of `experts`, stacked in that order: rows of the stacks, or,
        for a model built with lazy_experts, made here from the same per-expert seeds (and quantized the same
        way), so the full stack never exists."""
        if self.lazy is None:
            idx = torch.tensor(list(experts), dtype=torch.long, device=self.w13.device)
            out = {"w13": self.w13.detach().index_select(0, idx), "w2": self.w2.detach().index_select(0, idx)}
            if self.w13_scale is not None:
                out.update(w13_scale=self.w13_scale.index_select(0, idx), w2_scale=self.w2_scale.index_select(0, idx))
            return out
        seed, dtype, device = self.lazy
        c, n = self.c, len(experts)
        w13 = torch.empty(n, 2 * c.moe_inter, c.hidden, dtype=dtype, device=device)
        w2 = torch.empty(n, c.hidden, c.moe_inter, dtype=dtype, device=device)
        expert_normal_(w13, seed, self.layer_idx, 0, experts)
        expert_normal_(w2, seed, self.layer_idx, 1, experts)
        if not is_fp8(self.weight_dtype):
            return {"w13": w13, "w2": w2}
        (q13, s13), (q2, s2) = quantize_weight_blocks(w13), quantize_weight_blocks(w2)
        return {"w13": q13, "w2": q2, "w13_scale": s13, "w2_scale": s2}

    def quantize_experts(self) -> None:
        """Replace the (made) expert stacks by e4m3 with 128x128 block scales, as DeepSeek-V3 checkpoints store them."""
        self.weight_dtype = WeightDtype.FP8.value
        if self.lazy is not None:
            return
        (q13, s13), (q2, s2) = quantize_weight_blocks(self.w13.detach()), quantize_weight_blocks(self.w2.detach())
        self.w13, self.w2 = nn.Parameter(q13, requires_grad=False), nn.Parameter(q2, requires_grad=False)
        self.w13_scale, self.w2_scale = s13, s2

    def set_routing_skew(self, skew: float, seed: int) -> None:
        """Route with Zipf(skew) expert popularity (zipf_selection_bias) in place of the random bias."""
        tilt = zipf_selection_bias(self.c, skew, seed, self.layer_idx)
        tilt = tilt.to(self.bias.device, self.bias.dtype)
        if self.c.routing is Routing.DEEPSEEK_V3:
            with torch.no_grad():
                self.bias.copy_(tilt)
        else:
            self.logit_bias = tilt.float()

    def drop_experts(self) -> None:
        """The experts live elsewhere now (a DWDP shard, a DEP rank's share): keep no second copy."""
        self.w13 = nn.Parameter(self.w13.new_empty(0), requires_grad=False)
        self.w2 = nn.Parameter(self.w2.new_empty(0), requires_grad=False)
        self.w13_scale = self.w2_scale = None

    def forward(self, x):
        if self.experts is None:
            raise RuntimeError(f"MoE layer {self.layer_idx} has no routed experts: a model built with "
                               "lazy_experts=True must go through apply_dwdp or apply_dep first")
        logits = x.float() @ self.gate.float().t()
        r = self.route(logits if self.logit_bias is None else logits + self.logit_bias, self.bias)
        if self.shared is None:
            return self.experts.routed(x, r.topk_ids, r.topk_weights, self.layer_idx)
        # the shared expert beside the routed path (a side stream on GPUs: it hides DEP's dispatch, DWDP's pull wait)
        y, s = beside(x, lambda: self.experts.routed(x, r.topk_ids, r.topk_weights, self.layer_idx), self.shared)
        return y + s


class DecoderLayer(nn.Module):
    def __init__(self, c: ModelConfig, layer_idx: int):
        super().__init__()
        self.attn_norm, self.ffn_norm = RMSNorm(c.hidden, c.rms_eps), RMSNorm(c.hidden, c.rms_eps)
        self.attn = MlaAttention(c) if c.attention is AttentionKind.MLA else GqaAttention(c)
        self.ffn = MoEBlock(c, layer_idx) if c.is_moe(layer_idx) else DenseMLP(c.hidden, c.dense_inter)

    def forward(self, x, positions, seq_lens):
        x = x + self.attn(self.attn_norm(x), positions, seq_lens)
        return x + self.ffn(self.ffn_norm(x))


class Decoder(nn.Module):
    """Embedding, decoder layers, final norm, LM head. forward returns last-token logits per sequence."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        self.c = c
        self.embed = nn.Embedding(c.vocab, c.hidden)
        self.layers = nn.ModuleList(DecoderLayer(c, i) for i in range(c.layers))
        self.norm = RMSNorm(c.hidden, c.rms_eps)
        self.lm_head = nn.Linear(c.hidden, c.vocab, bias=False)

    def moe_blocks(self) -> List[MoEBlock]:
        return [layer.ffn for layer in self.layers if isinstance(layer.ffn, MoEBlock)]

    @classmethod
    def build(cls, c: ModelConfig, seed: int, device=None, dtype: torch.dtype = torch.float32,
              lazy_experts: bool = False, weight_dtype: str = "bfloat16",
              routing_skew: Optional[float] = None) -> "Decoder":
        """Seeded random model made directly on `device` in `dtype`: parameters are created on
        the meta device and materialised one by one, so a large preset never exists twice.
        lazy_experts: leave the routed-expert stacks unmade; apply_dwdp / apply_dep make only the
        experts a rank holds (MoEBlock.expert_tensors), with the same values as a full build.
        weight_dtype WeightDtype.FP8: routed experts quantized per 128x128 block (activations stay `dtype`).
        routing_skew: expert popularity Zipf(routing_skew) per layer (MoEBlock.set_routing_skew); None keeps the
        random router bias."""
        with torch.device("meta"):
            model = cls(c)
        device = torch.device(device or "cpu")
        moe = {id(t) for b in model.moe_blocks() for t in (b.w13, b.w2)} if lazy_experts else set()
        for module in model.modules():
            for name, p in list(module.named_parameters(recurse=False)):
                new = torch.empty((0,) if id(p) in moe else p.shape, device=device, dtype=dtype)
                setattr(module, name, nn.Parameter(new, requires_grad=p.requires_grad))
        if lazy_experts:
            for b in model.moe_blocks():
                b.lazy = (seed, dtype, device)
        model.init_random(seed)
        if routing_skew is not None:
            for b in model.moe_blocks():
                b.set_routing_skew(routing_skew, seed)
        if is_fp8(weight_dtype):
            for b in model.moe_blocks():
                b.quantize_experts()
        return model.finish()

    def init_random(self, seed: int) -> "Decoder":
        """Seeded weights, the same on every rank of one device type; activations stay O(1). Routed
        experts draw from a seed per expert (expert_normal_), everything else from one stream."""
        gens = {}
        stacks = {id(getattr(b, w)): (b, i) for b in self.moe_blocks() for i, w in enumerate(("w13", "w2"))}
        with torch.no_grad():
            for name, p in self.named_parameters():
                if id(p) in stacks:
                    b, which = stacks[id(p)]
                    if b.lazy is None:
                        expert_normal_(p, seed, b.layer_idx, which, range(p.shape[0]))
                    continue
                g = gens.setdefault(p.device, torch.Generator(device=p.device).manual_seed(seed))
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                else:  # in place, so even a 15 GB expert stack needs no temporary
                    p.normal_(0.0, 0.1 if name.endswith(".bias") else 1.0 / math.sqrt(p.shape[-1]), generator=g)
        return self.finish()

    def finish(self) -> "Decoder":
        """Point every MoE block that is not rewired (DWDP, DEP) at its own current expert
        tensors; call again after `.to()`, which replaces them."""
        for b in self.moe_blocks():
            if b.lazy is None and (b.experts is None or isinstance(b.experts.source, LocalWeights)):
                weights = ExpertWeights(b.w13, b.w2, b.w13_scale, b.w2_scale)
                b.experts = RoutedExperts(LocalWeights({b.layer_idx: weights}))
        return self

    def forward(self, input_ids: torch.Tensor, seq_lens: Sequence[int], positions: Optional[torch.Tensor] = None):
        if positions is None:
            positions = torch.cat([torch.arange(n, device=input_ids.device) for n in seq_lens]) if seq_lens \
                else input_ids.new_zeros(0)
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x, positions, seq_lens)
        last = torch.cumsum(torch.tensor(list(seq_lens), device=x.device), 0) - 1
        return self.lm_head(self.norm(x[last])) if len(seq_lens) else x.new_zeros(0, self.c.vocab)
