"""The DEP baseline: attention data parallel + expert parallel, over torch.distributed.

Each rank owns a contiguous range of experts (the even placement DWDP uses). Per MoE layer the
token exchange (`moe.exchange.AllToAllExchange`) dispatches one row per (token, destination rank),
the receiver runs its experts with the fused weighted combine, and one row per (token, rank)
comes back to be summed in fp32. Every rank of the group must join each layer's collectives, so
an idle rank runs a zero-token forward (the "dummy" forward).
"""

from __future__ import annotations

import socket
from typing import Optional

import torch
import torch.distributed as dist

from ..placement import even_placement
from ..moe import ExpertWeights
from ..moe.exchange import AllToAllExchange, CommClock, ExchangeBackend, ExchangeUnavailable
from ..moe.layer import LocalWeights, RoutedExperts
from .model import Decoder


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


def exchange_backend(device: torch.device, stage_on_host: bool, requested: Optional[str] = None) -> ExchangeBackend:
    """gloo on CPU ranks and ranks sharing a GPU; NCCL with one rank per GPU unless `requested`
    names another backend ("symm_mem": tried by apply_dep, NCCL if it does not initialise)."""
    if device.type != "cuda" or stage_on_host:
        return ExchangeBackend.GLOO
    return ExchangeBackend(requested) if requested not in (None, "auto") else ExchangeBackend.NCCL


def apply_dep(model: Decoder, clock: CommClock, max_num_tokens: int, stage_on_host: bool = False,
              backend: Optional[ExchangeBackend] = None) -> ExchangeBackend:
    """Rewire every MoE block to expert parallelism over the initialised default group; returns the
    exchange backend in use. Collective (the symmetric-memory backend rendezvouses its buffers)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    device = clock.device
    placement = even_placement(model.c.num_experts, world)
    owner = torch.empty(model.c.num_experts, dtype=torch.long)
    local_index = torch.empty(model.c.num_experts, dtype=torch.long)
    for r, experts in enumerate(placement.ranks):
        owner[list(experts)] = r
        local_index[list(experts)] = torch.arange(len(experts))
    num_local = [len(placement.local_experts(r)) for r in range(world)]
    backend = backend or exchange_backend(device, stage_on_host)
    try:
        exchange = AllToAllExchange(owner, local_index, num_local, max_num_tokens, backend, device, clock)
    except ExchangeUnavailable as e:
        if backend is not ExchangeBackend.SYMM_MEM:
            raise
        if rank == 0:
            print(f"WARNING: DEP exchange symm_mem unavailable ({e}); using nccl", flush=True)
        backend = ExchangeBackend.NCCL
        exchange = AllToAllExchange(owner, local_index, num_local, max_num_tokens, backend, device, clock)
    mine = list(placement.local_experts(rank))
    for b in model.moe_blocks():
        weights = ExpertWeights.from_tensors(b.expert_tensors(mine))
        b.experts = RoutedExperts(LocalWeights({b.layer_idx: weights}), exchange)  # same kernel, same layout
        b.drop_experts()
    return backend
