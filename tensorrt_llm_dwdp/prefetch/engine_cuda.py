"""Copy engine for GPU ranks: pulls on a dedicated stream, ordered by CUDA events.

The copies are copy-engine memcpys (not SM kernels) from a plan built once per layer, issued
through the C++ extension when it is built, else through cuda.bindings; by default each
layer's pull is captured in a CUDA graph per slot and replayed, so issuing costs one launch.
The host never blocks in the forward pass: the compute stream waits on events.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch

from ..config import PullIssue
from .plan import LayerCopyPlan

# graph: each (layer, slot) pull captured once and replayed (fastest to issue from device memory);
# batched: one cudaMemcpyBatchAsync per pull (fastest for pinned-host sources);
# per_slice: one cudaMemcpyAsync per slice.


def native_available() -> bool:
    try:
        from .. import _C  # noqa: F401
    except ImportError:
        return False
    return True


class _PyIssuer:
    """Fallback issuer through cuda.bindings; same semantics as the C++ CopyPlan."""

    def __init__(self, triples):
        from ..memory.cuda_common import check, cudart
        self._rt, self._check, self.triples = cudart(), check, list(triples)

    def issue(self, dst_base: int, stream: int, batched: bool = False) -> None:
        rt, kind = self._rt, self._rt.cudaMemcpyKind.cudaMemcpyDefault
        s = rt.cudaStream_t(stream)
        for src, off, n in self.triples:
            self._check(rt.cudaMemcpyAsync(dst_base + off, src, n, kind, s), "cudaMemcpyAsync")


class CudaCopyEngine:
    """fetch_done[s] is recorded on the copy stream after slot s's pull; compute_done[s] on
    the compute stream after the MoE that read slot s. Each pull waits compute_done of its
    slot; each MoE waits fetch_done of its slot. Wait times are read from timing events
    later, so measuring them never synchronises the host."""

    def __init__(self, num_slots: int, regions: Dict[Tuple[int, int], torch.Tensor],
                 peers: Dict[int, Sequence[torch.Tensor]], plans: Sequence[LayerCopyPlan], device: torch.device,
                 measure_waits: bool = True, issue_mode: PullIssue = PullIssue.GRAPH):
        if issue_mode not in {p.value for p in PullIssue}:
            raise ValueError(f"issue_mode={issue_mode!r}: use one of {', '.join(p.value for p in PullIssue)}")
        issue_mode = PullIssue(issue_mode)
        self.num_slots, self.device = num_slots, device
        self._dst = {key: t.data_ptr() for key, t in regions.items()}  # (layer, slot) -> composite region base
        self.stream = torch.cuda.Stream(device=self.device)
        self.fetch_done = [torch.cuda.Event() for _ in range(num_slots)]
        self.compute_done = [torch.cuda.Event() for _ in range(num_slots)]
        self.measure_waits, self.issue_mode = measure_waits, issue_mode
        self.native = native_available()
        make = make_issuer
        self._issuers, self._graphs = {}, {}
        for plan in plans:
            triples = [(peers[s.source][s.piece].data_ptr() + s.src_offset, s.dst_offset, s.nbytes)
                       for s in plan.slices]
            self._issuers[plan.layer] = make(triples) if triples else None
        if issue_mode is PullIssue.GRAPH:
            self._capture_graphs()

    def _capture_graphs(self) -> None:
        """One graph per (layer, slot): replaying it issues the layer's whole pull in one launch.
        The C++ plan captures and launches its own graphs (no Python per launch); else torch's."""
        for (layer, slot), dst in self._dst.items():
            issuer = self._issuers.get(layer)
            if issuer is None:
                continue
            if self.native:
                issuer.capture(dst)
                continue
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self.stream):
                issuer.issue(dst, self.stream.cuda_stream, batched=False)
            self._graphs[(layer, slot)] = graph

    def issue(self, plan: LayerCopyPlan, slot: int) -> None:
        issuer = self._issuers[plan.layer]
        self.stream.wait_event(self.compute_done[slot])
        if issuer is not None:
            dst = self._dst[(plan.layer, slot)]
            if self.issue_mode is PullIssue.GRAPH and self.native:
                issuer.launch(dst, self.stream.cuda_stream)
            elif self.issue_mode is PullIssue.GRAPH:
                with torch.cuda.stream(self.stream):
                    self._graphs[(plan.layer, slot)].replay()
            else:
                issuer.issue(dst, self.stream.cuda_stream, batched=self.issue_mode is PullIssue.BATCHED)
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
        self._graphs.clear()
        self._issuers.clear()


def make_issuer(triples: List):
    """A copy plan of (source address, destination offset, bytes) slices: the C++ CopyPlan where the extension is
    built, else the cuda.bindings one; issue(dst_base, stream, batched) queues it."""
    if not native_available():
        return _PyIssuer(triples)
    from .. import _C
    return _C.CopyPlan(triples)
