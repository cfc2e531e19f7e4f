"""MoE compute: routing, split-weight experts, shared expert. Knows nothing of where weights came from."""

from .experts import SharedExpert, SplitExpertWeights, WeightSegment, moe_experts, swiglu
from .routing import DeepSeekV3Routing, RoutingResult, SoftmaxTopKRouting

__all__ = ["DeepSeekV3Routing", "RoutingResult", "SharedExpert", "SoftmaxTopKRouting", "SplitExpertWeights",
           "WeightSegment", "expert_compute", "moe_experts", "swiglu"]


def expert_compute(x, topk_ids, topk_weights, weights: SplitExpertWeights, shared=None):
    """The experts on the fastest path that runs here: the grouped GEMMs (bf16 activations on a GPU, BF16 or
    FP8 block-scaled weights), else the plain-torch reference. Every host calls this one."""
    if x.is_cuda:
        from .grouped import can_run, grouped_moe_experts
        if can_run(x, weights)[0]:
            return grouped_moe_experts(x, topk_ids, topk_weights, weights, shared)
    return moe_experts(x, topk_ids, topk_weights, weights, shared)
