"""Per-rank context-phase executor: a request queue, batches packed up to max_num_tokens,
prefill only (the work of a disaggregated context server), per-iteration and per-request metrics.

Modes share the model and kernels: `local` and `dwdp` step on their own; `dep` steps in
lockstep with the group (every iteration an all-reduce decides whether anyone has work, and
idle ranks run a zero-token forward so the per-layer all-to-alls can complete).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List

import torch

from ..workload import Request
from .model import Decoder


@dataclass(frozen=True)
class IterationRecord:
    index: int
    start_s: float  # since the run's common start
    end_s: float
    tokens: int
    requests: int
    wait_s: float  # DWDP: compute stalled on pulls; DEP: time inside collectives
    bytes_pulled: int = 0  # DWDP: expert bytes this iteration's layers consumed from peers


@dataclass(frozen=True)
class RequestRecord:
    id: int
    isl: int
    arrival_s: float
    done_s: float

    @property
    def ttft_s(self) -> float:
        return self.done_s - self.arrival_s


@dataclass
class RunResult:
    rank: int
    mode: str
    iterations: List[IterationRecord] = field(default_factory=list)
    requests: List[RequestRecord] = field(default_factory=list)


class ContextExecutor:
    def __init__(self, model: Decoder, mode: str, max_num_tokens: int, device: torch.device, seed: int,
                 hooks=None, timer=None):
        if mode not in ("local", "dwdp", "dep"):
            raise ValueError(f"mode={mode!r}: use local, dwdp or dep")
        self.model, self.mode, self.max_num_tokens, self.device = model, mode, max_num_tokens, device
        self.hooks, self.timer, self.seed = hooks, timer, seed

    def _tokens(self, req: Request) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + req.id)
        return torch.randint(0, self.model.c.vocab, (req.isl,), generator=g)

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _anyone(self, flag: int) -> int:
        """DEP only: max over ranks of 2 (has a batch), 1 (has future requests), 0 (done)."""
        import torch.distributed as dist
        t = torch.tensor([flag], device=self.device if dist.get_backend() == "nccl" else "cpu")
        self.timer.run(dist.all_reduce, t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def run(self, requests: List[Request], t0: float, rank: int, progress=None) -> RunResult:
        """Serve `requests` (arrival_s relative to t0, the group's common start)."""
        too_long = [r for r in requests if r.isl > self.max_num_tokens]
        if too_long:
            raise ValueError(f"request {too_long[0].id} has {too_long[0].isl} tokens > max_num_tokens="
                             f"{self.max_num_tokens}; raise --max-num-tokens (chunked prefill is not modelled)")
        pending = sorted(requests, key=lambda r: (r.arrival_s, r.id))
        waiting: List[Request] = []
        result = RunResult(rank, self.mode)
        index = 0
        with torch.no_grad():
            while True:
                now = time.time() - t0
                while pending and pending[0].arrival_s <= now:
                    waiting.append(pending.pop(0))
                batch, room = [], self.max_num_tokens
                while waiting and waiting[0].isl <= room:
                    room -= waiting[0].isl
                    batch.append(waiting.pop(0))
                mark = self.timer.seconds if self.timer is not None else 0.0
                if self.mode == "dep":
                    state = self._anyone(2 if batch else (1 if pending or waiting else 0))
                    if state == 0:
                        break
                    if state == 1:
                        time.sleep(1e-3)
                        continue
                elif not batch:
                    if not pending and not waiting:
                        break
                    time.sleep(max(0.0, min(pending[0].arrival_s - now, 0.01)) if pending else 1e-3)
                    continue
                result.iterations.append(self._iterate(index, batch, t0, mark))
                for r in batch:
                    result.requests.append(RequestRecord(r.id, r.isl, r.arrival_s, result.iterations[-1].end_s))
                index += 1
                if progress is not None:
                    progress(len(result.requests), len(requests))
        return result

    def warm_up(self, requests: List[Request], steps: int) -> None:
        """`steps` untimed forwards of the first batch the queue would pack (kernel selection, library
        handles, allocator pools), so the timed run starts warm. Every rank runs the same number of
        forwards, with a zero-token batch where it has no requests, so DEP's collectives pair up."""
        batch, room = [], self.max_num_tokens
        for r in sorted(requests, key=lambda r: (r.arrival_s, r.id)):
            if r.isl > room:
                break
            batch.append(r)
            room -= r.isl
        with torch.no_grad():
            for _ in range(steps):
                self._forward(batch)

    def _forward(self, batch: List[Request]) -> int:
        """One model step over `batch`, bracketed by the hooks; returns its token count."""
        ids = torch.cat([self._tokens(r) for r in batch]) if batch else torch.zeros(0, dtype=torch.long)
        if self.hooks is not None:
            self.hooks.begin_step()
        self.model(ids.to(self.device), [r.isl for r in batch])
        if self.hooks is not None:
            self.hooks.end_step()
        self._sync()
        return len(ids)

    def _iterate(self, index: int, batch: List[Request], t0: float, mark: float) -> IterationRecord:
        """One forward; DEP's wait counts from `mark`, before the step's all-reduce."""
        start = time.time() - t0
        tokens = self._forward(batch)
        end = time.time() - t0
        pulled = 0
        if self.mode == "dwdp":
            step = self.hooks.metrics()[-1]
            wait, pulled = step.fetch_wait_s, step.bytes_pulled
        elif self.mode == "dep":
            wait = self.timer.seconds - mark
        else:
            wait = 0.0
        return IterationRecord(index, start, end, tokens, len(batch), wait, pulled)
