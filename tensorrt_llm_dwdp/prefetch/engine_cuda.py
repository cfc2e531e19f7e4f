"""Copy engine for GPU ranks: pulls on a dedicated stream, ordered by CUDA events.

The copies are cudaMemcpyAsync calls (copy engines, not SMs) issued from a plan built once
per layer: through the C++ extension when it is built, else through cuda.bindings.
The host never blocks in the forward pass: the compute stream waits on events.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch

from .plan import LayerCopyPlan


def native_available() -> bool:
    try:
        from .. import _C  # noqa: F401
    except ImportError:
        return False
    return True


class _PyIssuer:
    """Fallback issuer through cuda.bindings; same semantics as the C++ CopyPlan."""

    def __init__(self, triples):
        from ..memory.cuda_ipc import _check, _cudart
        self._rt, self._check, self.triples = _cudart(), _check, list(triples)

    def issue(self, dst_base: int, stream: int) -> None:
        rt, kind = self._rt, self._rt.cudaMemcpyKind.cudaMemcpyDefault
        s = rt.cudaStream_t(stream)
        for src, off, n in self.triples:
            self._check(rt.cudaMemcpyAsync(dst_base + off, src, n, kind, s), "cudaMemcpyAsync")


class CudaCopyEngine:
    """fetch_done[s] is recorded on the copy stream after slot s's pull; compute_done[s] on
    the compute stream after the MoE that read slot s. Each pull waits compute_done of its
    slot; each MoE waits fetch_done of its slot. Wait times are read from timing events
    later, so measuring them never synchronises the host."""

    def __init__(self, slots: Sequence[torch.Tensor], peers: Dict[int, torch.Tensor],
                 plans: Sequence[LayerCopyPlan], measure_waits: bool = True, use_native: bool = True):
        self.slots, self.device = list(slots), slots[0].device
        self.stream = torch.cuda.Stream(device=self.device)
        self.fetch_done = [torch.cuda.Event() for _ in slots]
        self.compute_done = [torch.cuda.Event() for _ in slots]
        self.measure_waits = measure_waits
        make = _native_issuer if (use_native and native_available()) else _PyIssuer
        self.native = make is _native_issuer
        self._issuers = {}
        for plan in plans:
            triples = [(peers[s.source].data_ptr() + s.src_offset, s.dst_offset, s.nbytes) for s in plan.slices]
            self._issuers[plan.layer] = make(triples) if triples else None

    def issue(self, plan: LayerCopyPlan, slot: int) -> None:
        issuer = self._issuers[plan.layer]
        self.stream.wait_event(self.compute_done[slot])
        if issuer is not None:
            issuer.issue(self.slots[slot].data_ptr(), self.stream.cuda_stream)
        self.fetch_done[slot].record(self.stream)

    def wait_fetch(self, slot: int):
        """Make the current stream wait for slot's pull; returns a wait record (see seconds)."""
        s = torch.cuda.current_stream(self.device)
        if not self.measure_waits:
            s.wait_event(self.fetch_done[slot])
            return None
        before, after = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        before.record(s)
        s.wait_event(self.fetch_done[slot])
        after.record(s)
        return (before, after)

    @staticmethod
    def seconds(record) -> float:
        if record is None:
            return 0.0
        before, after = record
        after.synchronize()
        return before.elapsed_time(after) / 1e3

    def record_compute_done(self, slot: int) -> None:
        self.compute_done[slot].record(torch.cuda.current_stream(self.device))

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        self.stream.synchronize()
        self._issuers.clear()


def _native_issuer(triples: List):
    from .. import _C
    return _C.CopyPlan(triples)
