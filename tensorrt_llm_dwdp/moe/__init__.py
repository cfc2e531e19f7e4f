"""MoE compute: routing, expert kernels on [E, ...] expert tensors, the layer composition. Knows nothing of
where weights came from."""

from .experts import SharedExpert, moe_experts, swiglu
from .kernels import ExpertKernel, KernelChoice, expert_compute, select
from .routing import DeepSeekV2Routing, DeepSeekV3Routing, RoutingResult, SoftmaxTopKRouting, make_router
from .weights import ExpertWeights

__all__ = ["DeepSeekV2Routing", "DeepSeekV3Routing", "ExpertKernel", "ExpertWeights", "KernelChoice", "RoutingResult", "SharedExpert",
           "SoftmaxTopKRouting", "make_router", "expert_compute", "moe_experts", "select", "swiglu"]
