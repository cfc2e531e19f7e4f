"""Per-rank context-phase executor: a request queue, batches packed up to max_num_tokens,
prefill only (the work of a disaggregated context server), per-iteration and per-request metrics.

Modes share the model and kernels: `local` and `dwdp` step on their own; `dep` steps in
lockstep with the group (every iteration an all-reduce decides whether anyone has work, and
idle ranks run a zero-token forward so the per-layer all-to-alls can complete). Zero-token
iterations are recorded (tokens == 0); the headline TPS/GPU counts the timed window's wall time on
every rank, busy-time TPS charges them to no mode (report.summarize).

Batches are packed by `workloads.requests.take_batch`, the rule the simulator predicts with. Chunked prefill
(`chunked_prefill=True`): a request longer than the room left in a batch is split across iterations.
This executor keeps no KV cache, so a chunk attends only within itself: MoE, dense and projection work
are exact, later chunks' attention is under-counted, alike for every mode.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Deque, List

import torch

from ..config import Mode
from ..workloads.requests import Chunk, Request, queue, take_batch, whole
from .model import Decoder


RUN_MODES = (Mode.LOCAL.value, Mode.DWDP.value, Mode.DEP.value)  # what an executor steps (dep+eplb steps as dep)


@dataclass(frozen=True)
class IterationRecord:
    index: int
    start_s: float  # since the run's common start (DEP: before the step's all-reduce)
    end_s: float
    tokens: int
    requests: int  # requests (or chunks of them) in the batch
    wait_s: float  # DWDP: compute stalled on pulls; DEP: host time inside collectives
    bytes_pulled: int = 0  # DWDP: expert bytes this iteration's layers consumed from peers
    comm_s: float = 0.0  # exposed communication, device-timed on GPUs: DEP collectives, DWDP pull stalls
    # (including the pull still in flight that the end-of-step sync waits for)
    expert_rows: int = 0  # (row, expert) pairs this rank's experts computed, over the step's MoE layers
    # bytes sent to other ranks (DEP: the exchange, attributed to the tokens' sender; DWDP: expert pulls) and the
    # least that could carry the step (DEP: one row per (token, destination rank) each way; DWDP: the pulls)
    bytes_moved: int = 0
    bytes_min: int = 0


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
                 hooks=None, clock=None, chunked_prefill: bool = False, traffic=None):
        if mode not in RUN_MODES:
            raise ValueError(f"mode={mode!r}: use one of {', '.join(RUN_MODES)}")
        mode = Mode(mode)
        if mode is Mode.DEP and clock is None:
            raise ValueError("mode dep needs the exchange's CommClock (clock=...)")
        self.model, self.mode, self.max_num_tokens, self.device = model, mode, max_num_tokens, device
        self.hooks, self.clock, self.seed, self.chunked = hooks, clock, seed, chunked_prefill
        self.traffic = traffic  # DEP: the exchange's byte counters (moe.exchange.Traffic)
        self._tail_s = 0.0  # the last step's exposed end-of-step wait (see _sync_step)
        self._rows = 0  # the last step's expert rows (see _expert_rows)
        self._bytes = None  # the last step's exchange traffic (moe.exchange.TrafficBytes)

    def _tokens(self, req: Request) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + req.id)
        return torch.randint(0, self.model.c.vocab, (req.isl,), generator=g)

    def _anyone(self, flag: int) -> int:
        """DEP only: max over ranks of 2 (has a batch), 1 (has future requests), 0 (done)."""
        import torch.distributed as dist
        t = torch.tensor([flag], device=self.device if dist.get_backend() == "nccl" else "cpu")
        self.clock.run(dist.all_reduce, t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def run(self, requests: List[Request], t0: float, rank: int, progress=None) -> RunResult:
        """Serve `requests` (arrival_s relative to t0, the group's common start)."""
        too_long = [r for r in requests if r.isl > self.max_num_tokens]
        if too_long and not self.chunked:
            raise ValueError(f"--max-num-tokens {self.max_num_tokens}: request {too_long[0].id} has "
                             f"{too_long[0].isl} tokens. Fix: raise --max-num-tokens or pass --chunked-prefill")
        pending = deque(sorted(requests, key=lambda r: (r.arrival_s, r.id)))
        waiting: Deque[Chunk] = deque()
        result = RunResult(rank, self.mode)
        index = 0
        with torch.no_grad():
            while True:
                now = time.time() - t0
                while pending and pending[0].arrival_s <= now:
                    waiting.append(whole(pending.popleft()))
                batch = take_batch(waiting, self.max_num_tokens, self.chunked)
                start, host_mark = now, 0.0
                if self.mode is Mode.DEP:
                    self.clock.take_device_s()  # drop what earlier idle polls spent
                    host_mark = self.clock.host_s
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
                result.iterations.append(self._iterate(index, batch, t0, start, host_mark))
                for c in batch:
                    if c.last:
                        q = c.request
                        result.requests.append(RequestRecord(q.id, q.isl, q.arrival_s, result.iterations[-1].end_s))
                index += 1
                if progress is not None and batch:
                    progress(len(result.requests), len(requests))
        return result

    def warm_up(self, requests: List[Request], steps: int) -> None:
        """`steps` untimed steps of the first batch the queue would pack (kernel selection, library
        handles, allocator pools, NCCL/gloo first use), so the timed run starts warm. A DEP step runs
        its all-reduce as a timed step does; every rank runs the same number of steps, with a
        zero-token batch where it has no requests, so DEP's collectives pair up."""
        waiting = queue(sorted(requests, key=lambda r: (r.arrival_s, r.id)))
        batch = take_batch(waiting, self.max_num_tokens, self.chunked)
        with torch.no_grad():
            for _ in range(steps):
                if self.mode is Mode.DEP:
                    self._anyone(2)
                self._forward(batch)
        if self.clock is not None:
            self.clock.take_device_s()

    def _forward(self, batch: List[Chunk]) -> int:
        """One model step over `batch`, bracketed by the hooks; returns its token count."""
        ids = torch.cat([self._tokens(c.request)[c.offset:c.offset + c.n] for c in batch]) if batch \
            else torch.zeros(0, dtype=torch.long)
        extra = {}
        if any(c.offset for c in batch):  # a later chunk: its tokens keep their positions in the request
            extra["positions"] = torch.cat([torch.arange(c.offset, c.offset + c.n) for c in batch]).to(self.device)
        if self.hooks is not None:
            self.hooks.begin_step()
        self.model(ids.to(self.device), [c.n for c in batch], **extra)
        if self.hooks is not None:
            self.hooks.end_step()
        self._tail_s = self._sync_step()
        self._rows = self._expert_rows()
        self._bytes = self.traffic.take() if self.traffic is not None else None
        return len(ids)

    def _expert_rows(self) -> int:
        """The step's expert rows from the MoE blocks' counters (read after the sync), which it resets."""
        rows = 0
        # one RoutedExperts may serve every block (apply_dwdp): each counter once
        routed = {id(b.experts): b.experts for b in getattr(self.model, "moe_blocks", lambda: [])() if b.experts}
        for experts in routed.values():
            if experts.expert_rows is not None:
                rows += int(experts.expert_rows)
                experts.reset_counters()
        return rows

    def _sync_step(self) -> float:
        """End of step on a GPU: the compute stream first, then the device. What the second wait takes is
        a pull still in flight (DWDP's copy stream) that this step's end waits for: exposed pull time,
        returned so it is charged to DWDP's comm. CPU ranks: nothing waits (0)."""
        if self.device.type != "cuda":
            return 0.0
        torch.cuda.current_stream(self.device).synchronize()
        t = time.perf_counter()
        torch.cuda.synchronize(self.device)
        return time.perf_counter() - t

    def _iterate(self, index: int, batch: List[Chunk], t0: float, start: float, host_mark: float) -> IterationRecord:
        """One forward; DEP's wait and comm count from before the step's all-reduce (`start`)."""
        if self.mode is not Mode.DEP:
            start = time.time() - t0
        tokens = self._forward(batch)
        end = time.time() - t0
        pulled, wait, comm = 0, 0.0, 0.0
        if self.mode is Mode.DWDP:
            step = self.hooks.last_step()
            wait, pulled = step.fetch_wait_s, step.bytes_pulled
            comm = wait + self._tail_s  # stalls inside the step, and the pull the step's end waited for
        elif self.mode is Mode.DEP:
            wait, comm = self.clock.host_s - host_mark, self.clock.take_device_s()
        moved, least = (pulled, pulled) if self.mode is Mode.DWDP else \
            (self._bytes.moved, self._bytes.minimum) if self._bytes is not None else (0, 0)
        return IterationRecord(index, start, end, tokens, len(batch), wait, pulled, comm, self._rows, moved, least)
