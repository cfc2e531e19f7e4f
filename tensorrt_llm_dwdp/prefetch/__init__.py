"""Per-layer copy plans, copy engines (CPU thread, CUDA stream) and the slot protocol."""

from .plan import CopySlice, LayerCopyPlan, build_layer_plan
from .prefetcher import Acquired, DwdpProtocolError, Prefetcher

__all__ = ["Acquired", "CopySlice", "DwdpProtocolError", "LayerCopyPlan", "Prefetcher", "build_layer_plan"]
