"""Top-k routing of tokens to experts (plain torch).

Every router returns a RoutingResult: topk_ids [T, K] int64 and topk_weights [T, K] float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RoutingResult:
    topk_ids: torch.Tensor  # [T, K] int64
    topk_weights: torch.Tensor  # [T, K] float32


@dataclass(frozen=True)
class DeepSeekV3Routing:
    """DeepSeek-V3 (noaux_tc): sigmoid scores, a correction bias for selection only,
    top-`topk_group` of `n_group` expert groups by the sum of each group's two best
    biased scores, top-k within them, weights renormalised then scaled."""

    top_k: int
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    renormalize: bool = True

    def check(self, num_experts: int) -> None:
        """ValueError naming the option when this routing cannot pick top_k of num_experts."""
        _check_groups(self.top_k, self.n_group, self.topk_group, num_experts)

    def __call__(self, logits: torch.Tensor, correction_bias: torch.Tensor) -> RoutingResult:
        num_tokens, num_experts = logits.shape
        if num_experts % self.n_group:
            raise ValueError(f"n_group={self.n_group} must divide num_experts={num_experts}")
        scores = torch.sigmoid(logits.float())
        biased = scores + correction_bias.float()
        if self.n_group > 1:
            grouped = biased.view(num_tokens, self.n_group, num_experts // self.n_group)
            group_scores = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(-1)
            keep = group_scores.topk(self.topk_group, dim=-1).indices
            mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
            mask = mask.unsqueeze(-1).expand_as(grouped).reshape(num_tokens, num_experts)
            biased = biased.masked_fill(~mask, float("-inf"))
        ids = biased.topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, ids)
        if self.renormalize:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return RoutingResult(ids, (weights * self.routed_scaling_factor).float())


@dataclass(frozen=True)
class SoftmaxTopKRouting:
    """Mixtral / Qwen-MoE: softmax over all experts, top-k, optional renormalisation."""

    top_k: int
    renormalize: bool = True

    def check(self, num_experts: int) -> None:
        _check_top_k(self.top_k, num_experts)

    def __call__(self, logits: torch.Tensor, correction_bias: torch.Tensor = None) -> RoutingResult:
        probs = torch.softmax(logits.float(), dim=-1)
        weights, ids = probs.topk(self.top_k, dim=-1)
        if self.renormalize:
            weights = weights / weights.sum(-1, keepdim=True)
        return RoutingResult(ids, weights.float())


@dataclass(frozen=True)
class DeepSeekV2Routing:
    """DeepSeek-V2 (topk_method greedy / group_limited_greedy): softmax scores; with n_group > 1 only the
    `topk_group` groups of highest max score compete; top-k of the scores. As DeepSeek-V2's own MoEGate:
    weights renormalised when `renormalize` and top_k > 1, otherwise scaled by routed_scaling_factor."""

    top_k: int
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    renormalize: bool = False

    def check(self, num_experts: int) -> None:
        _check_groups(self.top_k, self.n_group, self.topk_group, num_experts)

    def __call__(self, logits: torch.Tensor, correction_bias: torch.Tensor = None) -> RoutingResult:
        num_tokens, num_experts = logits.shape
        scores = torch.softmax(logits.float(), dim=-1)
        if self.n_group > 1:
            grouped = scores.view(num_tokens, self.n_group, num_experts // self.n_group)
            keep = grouped.amax(-1).topk(self.topk_group, dim=-1).indices
            mask = torch.zeros(num_tokens, self.n_group, dtype=torch.bool, device=logits.device).scatter_(1, keep, True)
            scores = scores.masked_fill(~mask.unsqueeze(-1).expand_as(grouped).reshape(num_tokens, num_experts), 0.0)
        weights, ids = scores.topk(self.top_k, dim=-1)
        if self.renormalize and self.top_k > 1:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        else:
            weights = weights * self.routed_scaling_factor
        return RoutingResult(ids, weights.float())


# Router kinds by name, as ModelConfig.routing (runtime/config.Routing) and verify's --routing give them.
ROUTER_KINDS = ("deepseek", "deepseek_v2", "softmax")


def make_router(kind: str, top_k: int, n_group: int = 1, topk_group: int = 1, routed_scaling: float = 1.0,
                renormalize: bool = True):
    """The router of `kind`: "deepseek" (V3 noaux_tc: sigmoid, correction bias, groups), "deepseek_v2" (greedy or
    group-limited greedy over softmax scores) or "softmax" (Qwen / Mixtral). `.check(E)` validates it."""
    if kind == "deepseek":
        return DeepSeekV3Routing(top_k, n_group, topk_group, routed_scaling, renormalize)
    if kind == "deepseek_v2":
        return DeepSeekV2Routing(top_k, n_group, topk_group, routed_scaling, renormalize)
    if kind == "softmax":
        return SoftmaxTopKRouting(top_k, renormalize)
    raise ValueError(f"routing={kind!r}: unknown. Fix: one of {', '.join(ROUTER_KINDS)}.")


def _check_groups(top_k: int, n_group: int, topk_group: int, num_experts: int) -> None:
    _check_top_k(top_k, num_experts)
    if n_group < 1 or num_experts % n_group:
        raise ValueError(f"n_group={n_group}: must divide num_experts={num_experts}. "
                         f"Fix: a divisor of {num_experts}, e.g. 1.")
    if not 1 <= topk_group <= n_group:
        raise ValueError(f"topk_group={topk_group}: must lie in [1, n_group={n_group}]. "
                         f"Fix: e.g. topk_group={max(1, n_group // 2)}.")
    reach = topk_group * (num_experts // n_group)
    if top_k > reach:
        raise ValueError(f"top_k={top_k}: the {topk_group} of {n_group} expert groups kept "
                         f"hold only {reach} experts. Fix: top_k <= {reach}, or raise topk_group.")


def _check_top_k(top_k: int, num_experts: int) -> None:
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k={top_k}: must lie in [1, num_experts={num_experts}]. "
                         f"Fix: top_k <= {num_experts}.")
