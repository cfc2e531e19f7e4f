"""Named per-layer and per-step DWDP metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class LayerMetrics:
    layer_id: int  # the model's layer index
    fetch_wait_s: float  # time compute stalled waiting for this layer's pull (device time on GPUs)
    bytes_pulled: int  # bytes of the pull this layer consumed (0 if its slot kept the layer)


@dataclass(frozen=True)
class StepMetrics:
    step: int
    host_wall_s: float  # host time from begin_step to end_step
    layers: Tuple[LayerMetrics, ...]

    @property
    def fetch_wait_s(self) -> float:
        return sum(m.fetch_wait_s for m in self.layers)

    @property
    def bytes_pulled(self) -> int:
        return sum(m.bytes_pulled for m in self.layers)
