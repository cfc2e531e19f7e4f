"""Expert popularity of the synthetic routers, shared by the runtime's routers and the simulator.

Within one MoE layer the i-th most popular expert takes a share of the assignments proportional to
1 / (i + 1)^skew (Zipf); which expert is the i-th is a random order drawn per layer. Skew 0 is uniform.
The runtime's random presets route with this popularity (runtime/model.py, zipf_selection_bias); the
simulator computes DEP's per-rank expert load from it with the runtime's own placements (eplb.py).

Pure functions over numbers: no torch.
"""

from __future__ import annotations

from typing import List, Sequence

# Default skew: an ASSUMPTION aiming at a DEP busiest-rank expert load of about 1.15-1.3x the mean at 4-8
# ranks, the range public EPLB tools quote for unbalanced DeepSeek serving; no per-expert load of the
# published runs is public. NOTE: the same exponent gives a smaller imbalance on more experts. Expected
# busiest / mean at 4 and 8 ranks (contiguous placement): 16 experts (the tiny preset) 1.15 / 1.34,
# 128 (Qwen3) 1.07 / 1.15, 256 (DeepSeek-V3/R1) 1.05 / 1.11; 256 experts reach 1.16 / 1.34 at skew 0.6.
DEFAULT_ROUTING_SKEW = 0.3


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
