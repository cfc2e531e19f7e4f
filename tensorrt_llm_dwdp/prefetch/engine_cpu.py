"""Copy engine for CPU ranks: a copy thread and host events, same protocol as the GPU engine."""

from __future__ import annotations

import queue
import threading
import time
from typing import Dict, Sequence, Tuple

import torch

from .plan import LayerCopyPlan


class CpuCopyEngine:
    """Pulls run on one thread; per-slot events order them against compute.

    fetch_done[s]: set when slot s holds its layer. compute_done[s]: set when the MoE that
    read slot s has finished; a pull into s waits for it.
    """

    def __init__(self, num_slots: int, regions: Dict[Tuple[int, int], torch.Tensor],
                 peers: Dict[int, Sequence[torch.Tensor]]):
        self.regions, self.peers = dict(regions), dict(peers)
        self.fetch_done = [threading.Event() for _ in range(num_slots)]
        self.compute_done = [threading.Event() for _ in range(num_slots)]
        for e in self.compute_done:
            e.set()
        self._jobs: "queue.Queue" = queue.Queue()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="dwdp-copy", daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            job = self._jobs.get()
            if job is None:
                self._jobs.task_done()
                return
            plan, slot = job
            try:
                self.compute_done[slot].wait()
                dst = self.regions[(plan.layer, slot)]
                for s in plan.slices:
                    dst[s.dst_offset:s.dst_offset + s.nbytes].copy_(
                        self.peers[s.source][s.piece][s.src_offset:s.src_offset + s.nbytes])
            except BaseException as e:  # noqa: BLE001 - surfaced to the compute side
                self._error = e
            finally:
                self.fetch_done[slot].set()
                self._jobs.task_done()

    def issue(self, plan: LayerCopyPlan, slot: int) -> None:
        self.fetch_done[slot].clear()
        self._jobs.put((plan, slot))

    def wait_fetch(self, slot: int) -> float:
        """Block until slot's pull is done; returns seconds waited."""
        t0 = time.perf_counter()
        self.fetch_done[slot].wait()
        waited = time.perf_counter() - t0
        if self._error is not None:
            raise RuntimeError(f"DWDP copy thread failed: {self._error!r}") from self._error
        self.compute_done[slot].clear()
        return waited

    @staticmethod
    def seconds(record: float) -> float:
        return record

    def record_compute_done(self, slot: int) -> None:
        self.compute_done[slot].set()

    def synchronize(self) -> None:
        """Wait until every issued pull has finished."""
        self._jobs.join()

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)
