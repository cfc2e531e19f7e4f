"""The DEP baseline: attention data parallel + expert parallel, over torch.distributed.

Each rank owns a contiguous range of experts (the even placement DWDP uses). Per MoE layer:
count exchange, dispatch of token rows to the experts' owners, local expert compute, combine
back to the senders, who apply the routing weights. Every rank of the group must join each
layer's collectives, so an idle rank runs a zero-token forward (the "dummy" forward).
"""

from __future__ import annotations

import socket
import time
from typing import List

import torch
import torch.distributed as dist

from ..placement import even_placement
from ..moe import ExpertWeights, expert_compute
from .model import Decoder


class CollectiveTimer:
    """Wall time spent inside collectives (including waiting for the slowest rank)."""

    def __init__(self):
        self.seconds = 0.0

    def run(self, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.seconds += time.perf_counter() - t0
        return out


def init_torch_distributed(mpi_comm, device: torch.device) -> bool:
    """torch.distributed over the ranks of an MPI communicator: NCCL when every rank has its own
    GPU, gloo otherwise. Returns True when collectives must stage GPU tensors through the host
    (several ranks sharing one GPU, which NCCL refuses)."""
    shared_gpu = device.type == "cuda" and torch.cuda.device_count() < mpi_comm.Get_size()
    if dist.is_initialized():
        return shared_gpu
    port = None
    if mpi_comm.Get_rank() == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    port = mpi_comm.bcast(port, root=0)
    backend = "nccl" if device.type == "cuda" and not shared_gpu else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=mpi_comm.Get_rank(),
                            world_size=mpi_comm.Get_size())
    return shared_gpu


def shutdown_torch_distributed() -> None:
    """Collective: tear the group down together. A process that exits with gloo's threads still
    attached to a live group can abort at interpreter exit ("terminate called without an active
    exception")."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class AllToAllExperts:
    """Expert source for DEP: this rank computes experts [lo, hi) for every rank's tokens."""

    def __init__(self, weights: ExpertWeights, owner: torch.Tensor, lo: int, timer: CollectiveTimer,
                 stage_on_host: bool = False):
        self._weights = weights
        self.owner, self.lo, self.timer, self.stage = owner, lo, timer, stage_on_host
        self.world = dist.get_world_size()

    def _exchange(self, t: torch.Tensor, send: List[int], recv: List[int]) -> torch.Tensor:
        src = t.contiguous().cpu() if self.stage else t.contiguous()
        out = src.new_empty((sum(recv),) + tuple(t.shape[1:]))
        self.timer.run(dist.all_to_all_single, out, src, recv, send)
        return out.to(t.device) if self.stage else out

    def routed(self, x, topk_ids, topk_weights, layer_idx: int):
        tokens, k = topk_ids.shape
        flat = topk_ids.reshape(-1)
        dest = self.owner[flat]
        order = torch.argsort(dest, stable=True)
        send_counts = torch.bincount(dest, minlength=self.world)
        ones = [1] * self.world
        send, recv = send_counts.tolist(), self._exchange(send_counts, ones, ones).tolist()
        rows = self._exchange(x[order // k], send, recv)
        local_ids = self._exchange(flat[order], send, recv) - self.lo
        y = expert_compute(rows, local_ids[:, None], torch.ones(len(local_ids), 1, device=x.device), self._weights)
        back = self._exchange(y, recv, send)  # in `order`
        out = torch.zeros_like(x)
        out.index_add_(0, order // k, back * topk_weights.reshape(-1)[order, None].to(x.dtype))
        return out


def apply_dep(model: Decoder, timer: CollectiveTimer, stage_on_host: bool = False) -> None:
    """Rewire every MoE block to expert parallelism over the initialised default group."""
    world, rank = dist.get_world_size(), dist.get_rank()
    placement = even_placement(model.c.num_experts, world)
    owner = torch.empty(model.c.num_experts, dtype=torch.long)
    for r, experts in enumerate(placement.ranks):
        owner[list(experts)] = r
    mine = placement.local_experts(rank)
    lo, hi = (mine[0], mine[-1] + 1) if mine else (0, 0)
    for b in model.moe_blocks():
        weights = ExpertWeights.from_tensors(b.expert_tensors(range(lo, hi)))
        b.experts = AllToAllExperts(weights, owner.to(weights.device), lo, timer, stage_on_host)
        b.drop_experts()
