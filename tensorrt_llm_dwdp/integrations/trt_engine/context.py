"""Hand a rank's DWDP state to the TensorRT plugin: a C++ DwdpContext built from DwdpHooks' real shards.

DwdpHooks.setup does the collective part (handles exchanged over mpi4py, shards filled, composite views mapped,
copy plans built). `register_plugin_context(hooks, context_id)` then copies what the plugin needs into a C++
DwdpContext and registers it in the core library's registry, where DwdpMoe's enqueue finds it by `context_id`:

  * per (MoE layer ordinal, slot): the composite views' addresses and expert strides, i.e. exactly
    hooks' ExpertWeights (w13 [E, 2I, H] gate rows first, w2 [E, H, I], FP8 block scales);
  * per layer: the copy plan, the same (source address, offset, bytes) slices the Python CudaCopyEngine issues;
  * per slot: the base its pulls write through (every layer's view of slot s maps the same slot pieces at the
    same offsets, so one base per slot reaches them all);
  * the slot count (the config's prefetch_depth).

One owner of the pull state. While the plugin context is registered, the C++ slot ring owns the slots: the
engine's MoE layers acquire and release them (a step opens at layer 0 and closes after the last layer), and the
Python prefetcher is fenced off: hooks.begin_step / layer_weights / layer_done raise instead of pulling into
slots the plugin is reading. `close()` drains the C++ copy stream, unregisters the context and hands the ring back
to Python (whose slot bookkeeping then restarts from empty slots). Close it before `hooks.close()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ...config import DwdpConfigError, WeightDtype
from .build import ExpertDtype



class PluginOwnsPullsError(RuntimeError):
    """These hooks cannot be handed to the plugin now: already registered, or a Python step is open."""


@dataclass
class PluginContext:
    """A registered C++ DwdpContext and the hooks whose memory it points into (kept alive until close)."""

    context_id: int
    dtype: ExpertDtype
    num_layers: int
    num_slots: int
    native: object  # _C.DwdpContext
    hooks: object  # DwdpHooks whose slot ring is lent to this context until close()
    closed: bool = False

    @property
    def pulls_issued(self) -> int:
        return self.native.pulls_issued

    def close(self) -> None:
        """Drain the plugin's pulls, unregister the context and give the slot ring back to the Python hooks.
        Call it once the engine's work on its stream has finished (the plugin's reads of the slots)."""
        if self.closed:
            return
        self.closed = True
        from ... import _C
        try:
            self.native.synchronize()
        finally:
            _C.unregister_context(self.context_id)
            self.native = None
            self.hooks.return_ring()

    def __enter__(self) -> "PluginContext":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


def expert_dtype_of(weights) -> ExpertDtype:
    import torch
    if weights.w13.dtype == torch.bfloat16:
        return ExpertDtype.BF16
    if weights.is_fp8 and weights.w13_scale is not None and weights.w2_scale is not None:
        return ExpertDtype.FP8_BLOCK
    raise DwdpConfigError("weight_dtype", str(weights.w13.dtype),
                          f"the DwdpMoe plugin reads {WeightDtype.BF16} or block-scaled {WeightDtype.FP8} experts",
                          f"set weight_dtype to {WeightDtype.BF16} or {WeightDtype.FP8}")


def register_plugin_context(hooks, context_id: int, issue_mode: Optional[str] = None) -> PluginContext:
    """Build this rank's C++ DwdpContext from `hooks` (after DwdpHooks.setup, GPU backends) and register it under
    `context_id` (the plugin's context_id field). Not collective. Raises DwdpConfigError on hooks the plugin
    cannot serve, PluginOwnsPullsError if Python has a step open."""
    from ...layout import W13Order

    if hooks.ring_lent:
        raise PluginOwnsPullsError(f"these hooks' slot ring is already lent: {hooks.prefetcher.borrower}")
    if hooks.backend.device.type != "cuda":
        raise DwdpConfigError("memory_backend", hooks.config.memory_backend,
                              "the TensorRT plugin runs on GPUs and reads CUDA memory",
                              "use memory_backend=cuda_vmm or cuda_ipc")
    if hooks.shape.w13_order is not W13Order.GATE_UP:
        raise DwdpConfigError("MoeShape.w13_order", hooks.shape.w13_order.name,
                              "the DwdpMoe plugin reads w13 with gate rows first",
                              "set up the hooks with w13_order=W13Order.GATE_UP")
    if hooks.in_step:
        raise PluginOwnsPullsError("the Python hooks have a step open: end_step() before handing the slots to "
                                   "the plugin")
    from ... import _C  # after the checks: a CPU-only install refuses CPU hooks in the same words
    from ...prefetch.native import STEP_IMPLICIT, native_context
    L, D = hooks.shape.num_layers, hooks.config.prefetch_depth
    ring = hooks.lend_ring(f"DWDP context {context_id} (the TensorRT plugin)")
    try:
        dtype = expert_dtype_of(ring.views[(0, 0)])
        # STEP_IMPLICIT: an engine makes no per-step host call, so the first and last MoE layers bracket a step
        native = native_context(ring.views, ring.slices, ring.slot_bases, D, issue_mode or hooks.config.pull_issue,
                                STEP_IMPLICIT, hooks.backend.device)
        _C.register_context(context_id, native)
    except BaseException:
        hooks.return_ring()
        raise
    return PluginContext(context_id, dtype, L, D, native, hooks)
