"""The slot ring and its copy engine driven from the C++ core: one native call per hook call.

On GPUs the hooks' per-layer protocol (which layer is pulled into which slot, compute waiting for its own pull,
a slot refilled once its MoE is done) is the C++ DwdpContext that the TensorRT plugin runs, in explicit step
mode. Through torch's Python CUDA calls (Prefetcher over CudaCopyEngine: two timing events created per layer,
current-stream lookups, event records and waits, the graph launch) a layer cost the hooks 39 us of host time on
an H200 host, here 13 us (BENCHMARKS.md, 2026-12-05): acquire and release are one native call each. Same protocol, same error sentences (cpp/src/slot_ring.cpp mirrors
prefetcher.py, tests/test_slot_ring.py compares them call by call); Prefetcher over CudaCopyEngine stays the path
where the extension is not built, or where DWDP_NATIVE_RING=0 asks for it (`bench kernels --sections hooks` runs
both).
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Sequence, Tuple

import torch

from ..config import PullIssue
from .prefetcher import Acquired, DwdpProtocolError

# PullIssue -> the C++ IssueMode, and the C++ StepMode values (cpp/include/dwdp/context.h)
ISSUE_MODE = {PullIssue.GRAPH: 0, PullIssue.BATCHED: 1, PullIssue.PER_SLICE: 2}
STEP_EXPLICIT, STEP_IMPLICIT = 0, 1


ENV = "DWDP_NATIVE_RING"


def available() -> bool:
    """Whether GPU hooks drive their ring natively: the C++ extension (with the DWDP context) is built here and
    DWDP_NATIVE_RING is not 0."""
    if os.environ.get(ENV, "1") == "0":
        return False
    try:
        from .. import _C
    except ImportError:
        return False
    return hasattr(_C, "DwdpContext")


def expert_pointers(weights):
    """_C.ExpertPointers of one ExpertWeights (addresses; strides in elements of each tensor's dtype)."""
    from .. import _C

    def addr(t):
        return 0 if t is None else t.data_ptr()

    def stride(t):
        return 0 if t is None else t.stride(0)

    return _C.ExpertPointers(weights.w13.data_ptr(), weights.w2.data_ptr(), addr(weights.w13_scale),
                             addr(weights.w2_scale), stride(weights.w13), stride(weights.w2),
                             stride(weights.w13_scale), stride(weights.w2_scale))


def native_context(views: Dict[Tuple[int, int], object], slices: Sequence[Sequence[Tuple[int, int, int]]],
                   slot_bases: Sequence[int], num_slots: int, issue_mode, step_mode: int, device: torch.device):
    """A _C.DwdpContext over a rank's slot ring: views[(layer ordinal, slot)] ExpertWeights, per layer the pull's
    (source address, slot offset, bytes) slices, per slot the base those offsets are taken from. Its copy stream
    and events are made on `device`."""
    from .. import _C
    layers = len(slices)
    pointers = [expert_pointers(views[(layer, slot)]) for layer in range(layers) for slot in range(num_slots)]
    with torch.cuda.device(device):
        return _C.DwdpContext(views[(0, 0)].num_experts, num_slots, pointers, [list(s) for s in slices],
                              list(slot_bases), ISSUE_MODE[PullIssue(issue_mode)], step_mode)


class NativeRing:
    """Prefetcher and copy engine in one, for DwdpHooks on a GPU: begin_step / acquire / release / abort_step /
    end_step as Prefetcher has them (acquire's wait record is read by `seconds`), synchronize / close as the engine
    has them. The current CUDA stream of `device` is the compute stream of each call."""

    def __init__(self, views, slices, slot_bases, num_slots: int, device: torch.device, measure_waits: bool = True,
                 issue_mode: PullIssue = PullIssue.GRAPH):
        from .. import _C
        self._errors = _C.ProtocolError
        self.num_slots, self.num_layers, self.device = num_slots, len(slices), device
        self.measure_waits = measure_waits
        self._index = device.index if device.index is not None else torch.cuda.current_device()
        self._ctx = native_context(views, slices, slot_bases, num_slots, issue_mode, STEP_EXPLICIT, device)

    def _stream(self) -> int:
        # NOTE: the raw getter builds no torch Stream object, which torch.cuda.current_stream() does on every call
        return torch._C._cuda_getCurrentRawStream(self._index)

    @property
    def in_step(self) -> bool:
        return self._ctx.in_step

    def begin_step(self) -> None:
        try:
            self._ctx.begin_step()
        except self._errors as e:
            raise DwdpProtocolError(str(e)) from None

    def acquire(self, layer: int) -> Acquired:
        try:
            slot, fresh, record = self._ctx.acquire_timed(layer, self._stream(), self.measure_waits)
        except self._errors as e:
            raise DwdpProtocolError(str(e)) from None
        return Acquired(slot, record, fresh)

    def release(self, layer: int) -> None:
        try:
            self._ctx.release(layer, self._stream())
        except self._errors as e:
            raise DwdpProtocolError(str(e)) from None

    def end_step(self) -> None:
        try:
            self._ctx.end_step()
        except self._errors as e:
            raise DwdpProtocolError(str(e)) from None

    def abort_step(self) -> None:
        self._ctx.abort_step(self._stream())

    def seconds(self, record: Optional[int]) -> float:
        """Seconds compute waited at the acquire that returned `record` (blocks until the device passed it)."""
        return 0.0 if record is None or record < 0 else self._ctx.wait_seconds(record)

    def synchronize(self) -> None:
        if self._ctx is not None:
            self._ctx.synchronize()

    def close(self) -> None:
        self.synchronize()
        self._ctx = None
