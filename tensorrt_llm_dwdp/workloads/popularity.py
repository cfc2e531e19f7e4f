"""Expert popularity of the synthetic routers, shared by the runtime's routers and the simulator.

Within one MoE layer the i-th most popular expert takes a share of the assignments proportional to
1 / (i + 1)^skew (Zipf); which expert is the i-th is a random order drawn per layer. Skew 0 is uniform.
The runtime's random presets route with this popularity (runtime/model.py, zipf_selection_bias); the
simulator computes DEP's per-rank expert load from it with the runtime's own placements (eplb.py).

Pure functions over numbers: no torch.
"""

from __future__ import annotations

import math
from typing import List, Sequence

# The default skew is set per model from a stated target, DEP's busiest rank carrying TARGET_IMBALANCE x the
# mean expert load at TARGET_RANKS ranks (contiguous placement): the lower end of the 1.15-1.3x at 4-8 ranks
# that public EPLB tools quote for unbalanced DeepSeek serving. An ASSUMPTION: no per-expert load of the
# published runs is public. One exponent for every model would not do: the same skew gives a smaller imbalance
# on more experts (0.3 gave 1.15x on 16 experts but 1.05x on DeepSeek's 256). At the fitted skews the busiest
# rank carries 1.31-1.34x the mean at 8 ranks. Fitted with sim.dep.layer_load (600 draws per point;
# tests/test_sim.py re-checks it): experts -> skew, linear in log2(experts) between the points.
TARGET_IMBALANCE, TARGET_RANKS = 1.15, 4
SKEW_FOR_EXPERTS = ((8, 0.232), (16, 0.291), (32, 0.362), (64, 0.420), (128, 0.501), (256, 0.587), (384, 0.619))


def default_skew(num_experts: int) -> float:
    """The Zipf exponent that gives `num_experts` experts the target imbalance (clamped to the fitted range)."""
    pts = SKEW_FOR_EXPERTS
    if num_experts <= pts[0][0]:
        return pts[0][1]
    for (e0, s0), (e1, s1) in zip(pts, pts[1:]):
        if num_experts <= e1:
            t = (math.log2(num_experts) - math.log2(e0)) / (math.log2(e1) - math.log2(e0))
            return s0 + t * (s1 - s0)
    return pts[-1][1]


def zipf_shares(num_experts: int, skew: float) -> List[float]:
    """Share of the assignments of the i-th most popular expert (sums to 1)."""
    if num_experts < 1 or not skew >= 0:
        raise ValueError(f"popularity: {num_experts} experts, skew {skew}: need >= 1 expert and skew >= 0")
    w = [1.0 / (i + 1) ** skew for i in range(num_experts)]
    total = sum(w)
    return [x / total for x in w]


def expert_shares(order: Sequence[int], skew: float) -> List[float]:
    """Share of each expert (indexed by expert id) when `order[i]` is the i-th most popular expert."""
    shares = zipf_shares(len(order), skew)
    out = [0.0] * len(order)
    for rank, expert in enumerate(order):
        out[expert] = shares[rank]
    return out
