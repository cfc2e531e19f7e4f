"""The hooks' step protocol around a TensorRT-LLM model's forward, kept whole when a step fails.

engine.forward (PyExecutor._forward_step calls it and, on an exception, calls _handle_errors and serves the
next step) is bracketed by begin_step / end_step; a failed step is closed before the exception leaves it. A
model forward outside engine.forward (main: DecoderRunner._forward_warmup; autotuner passes) is a step opened
by the first MoE layer and closed by the last, or by the failing one. Each MoE module's own forward is
bracketed: layer_weights(l) (the current stream waits for layer l's pull) before, layer_done(l) after its
kernels are enqueued. The wait sits before routing too: the forward is the module's own, so there is no later
point to hook.
"""

from __future__ import annotations

import functools
from enum import Enum
from typing import List

import torch

from ...config import DwdpConfigError
from ...hooks import DwdpHooks
from .discover import MoeLayer
from .log import log


class StepState(Enum):
    IDLE = "idle"
    ENGINE = "engine"  # inside engine.forward
    IMPLICIT = "implicit"  # a model forward outside engine.forward, opened by its first MoE layer


class Steps:
    """Where this rank is in the hooks' step protocol (`state`; `ran`: MoE layers done in the open step), and
    the wrappers of engine.forward (`bracket`) and of each MoE module's forward (`moe_forward`) that drive it."""

    def __init__(self, hooks: DwdpHooks, layers: List[MoeLayer]):
        self.hooks, self.layers = hooks, layers
        self.state, self.ran = StepState.IDLE, 0

    def open(self, state: StepState) -> None:
        """Begin a step (closing one a failure left open first)."""
        if self.state is not StepState.IDLE:
            log(f"closing a step left open by a failure ({self.state.value}, {self.ran} of {len(self.layers)} "
                "MoE layers ran)")
            self.abort()
        self.hooks.begin_step()
        self.state, self.ran = state, 0

    def close(self) -> None:
        """End the open step; a step that ran some but not all MoE layers is aborted and raises."""
        ran, total = self.ran, len(self.layers)
        if ran == total:
            try:
                self.hooks.end_step()
            finally:
                self.state, self.ran = StepState.IDLE, 0
            return
        self.abort()  # the pulls land and the slots are free again either way
        if ran:  # none ran: nothing was read (a forward without MoE work); some ran: the host skipped layers
            raise RuntimeError(f"the model forward ran {ran} of {total} DWDP MoE layers; DWDP needs every MoE layer "
                               "of the model in each forward, in order")

    def abort(self) -> None:
        """Close the open step: the hooks free the layer in hand and let every pull in flight land."""
        self.state, self.ran = StepState.IDLE, 0
        self.hooks.abort_step()

    def abort_after(self, error: BaseException) -> None:
        """abort(), where `error` is what the caller reports: a failure to close is logged, not raised."""
        try:
            self.abort()
        except Exception as e:  # noqa: BLE001 - the step's own error is the one to report
            log(f"could not close the failed step ({type(e).__name__}: {e}); DWDP steps may fail from here "
                f"(the step failed with {type(error).__name__}: {error})")

    def bracket(self, forward):
        """engine.forward as one step."""
        @functools.wraps(forward)
        def run(*args, **kwargs):
            self.open(StepState.ENGINE)
            try:
                out = forward(*args, **kwargs)
            except BaseException as e:
                self.abort_after(e)
                raise
            self.close()
            return out
        return run

    def moe_forward(self, layer: MoeLayer, forward, *args, **kwargs):
        """The module's own forward (arguments passed through untouched), with this layer's composite weights
        in place before and layer_done after."""
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            raise DwdpConfigError("cuda_graph_config", "enabled", "DWDP MoE layers wait on prefetch events and are "
                                  "not captured in CUDA graphs", "set cuda_graph_config: null on DWDP servers")
        idx = layer.layer_idx
        if self.state is StepState.IDLE or (self.state is StepState.IMPLICIT and idx == self.layers[0].layer_idx):
            self.open(StepState.IMPLICIT)  # a forward outside engine.forward (warm-up, autotuner): a step of its own
        implicit = self.state is StepState.IMPLICIT
        try:
            point(layer.holder, self.hooks.layer_weights(idx))
            y = forward(*args, **kwargs)
            self.hooks.layer_done(idx)
            self.ran += 1
        except BaseException as e:
            if implicit:  # nobody above closes it
                self.abort_after(e)
            raise
        if implicit and self.ran == len(self.layers):
            self.close()
        return y


def point(holder, weights) -> None:
    """The module's expert tensors become this step's composite tensors (the Parameter objects stay), and the
    quant method rebuilds what it derived from them (FusedMoEMethodBase.setup_quant_scales(module), which
    TensorRT-LLM reruns after loading "as the tensors may have been modified")."""
    for name, t in (("w3_w1_weight", weights.w13), ("w2_weight", weights.w2),
                    ("w3_w1_weight_scaling_factor", weights.w13_scale), ("w2_weight_scaling_factor", weights.w2_scale)):
        if t is not None:  # contiguous: setup refused any placement that would pad the expert stride
            getattr(holder, name).data = t
    if weights.w13_scale is not None:
        method = getattr(holder, "quant_method", None)
        if hasattr(method, "setup_quant_scales"):
            method.setup_quant_scales(holder)
