"""MoE compute: routing, split-weight experts, shared expert. Knows nothing of where weights came from."""

from .experts import SharedExpert, SplitExpertWeights, WeightSegment, moe_experts, swiglu
from .routing import DeepSeekV3Routing, RoutingResult, SoftmaxTopKRouting

__all__ = ["DeepSeekV3Routing", "RoutingResult", "SharedExpert", "SoftmaxTopKRouting", "SplitExpertWeights",
           "WeightSegment", "moe_experts", "swiglu"]
