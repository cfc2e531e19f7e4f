"""An independent float64 reference: per-token loops, no sorting, no composite views.

Written separately from `moe/` on purpose, so a bug there cannot hide in both.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch


def route_token_deepseek(logits: torch.Tensor, bias: torch.Tensor, top_k: int, n_group: int, topk_group: int,
                         scaling: float) -> List[Tuple[int, float]]:
    """One token's (expert, weight) choices under DeepSeek-V3 routing, in float64 Python."""
    e = logits.numel()
    scores = [1.0 / (1.0 + math.exp(-float(v))) for v in logits.tolist()]
    biased = [s + float(b) for s, b in zip(scores, bias.tolist())]
    per_group = e // n_group
    allowed = set(range(e))
    if n_group > 1:
        group_score = []
        for g in range(n_group):
            members = sorted(biased[g * per_group:(g + 1) * per_group], reverse=True)
            group_score.append(sum(members[:2]))
        best = sorted(range(n_group), key=lambda g: -group_score[g])[:topk_group]
        allowed = {g * per_group + i for g in best for i in range(per_group)}
    chosen = sorted(allowed, key=lambda i: -biased[i])[:top_k]
    w = [scores[i] for i in chosen]
    total = sum(w)
    return [(i, wi / total * scaling) for i, wi in zip(chosen, w)]


def route_token_softmax(logits: torch.Tensor, top_k: int, renormalize: bool) -> List[Tuple[int, float]]:
    vals = logits.tolist()
    m = max(vals)
    ex = [math.exp(v - m) for v in vals]
    z = sum(ex)
    probs = [v / z for v in ex]
    chosen = sorted(range(len(vals)), key=lambda i: -probs[i])[:top_k]
    total = sum(probs[i] for i in chosen) if renormalize else 1.0
    return [(i, probs[i] / total) for i in chosen]


def expert_f64(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """x [H] float64; w13 [2I, H]; w2 [H, I]."""
    inter = w2.shape[1]
    gate = w13[:inter].double() @ x
    up = w13[inter:].double() @ x
    act = gate / (1.0 + torch.exp(-gate)) * up
    return w2.double() @ act


def moe_token_f64(x: torch.Tensor, choices: List[Tuple[int, float]], w13: torch.Tensor, w2: torch.Tensor,
                  shared: Optional[Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """One token through routed experts w13 [E, 2I, H] / w2 [E, H, I] (all local) plus the shared expert."""
    y = torch.zeros_like(x)
    for e, w in choices:
        y += w * expert_f64(x, w13[e], w2[e])
    if shared is not None:
        y += expert_f64(x, shared[0], shared[1])
    return y
