"""The DEP baseline: attention data parallel + expert parallel, over torch.distributed.

Each rank owns a contiguous range of experts (the even placement DWDP uses). Per MoE layer the
token exchange (`moe.exchange.AllToAllExchange`) dispatches one row per (token, destination rank),
the receiver runs its experts with the fused weighted combine, and one row per (token, rank)
comes back to be summed in fp32. Every rank of the group must join each layer's collectives, so
an idle rank runs a zero-token forward (the "dummy" forward).

EPLB (`apply_eplb`, an option): after the warm-up measured each expert's load, redundant replicas of
the hot experts go into extra slots on every rank (eplb.py) and each token's expert goes to one of its
replicas; the exchange is the same, over slots instead of experts.

Dispatch rows are BF16 or, for FP8 experts, FP8 (`dispatch_choice`): 1x128-quantized values and their scales,
about half the bytes, quantized once by the sender as the FP8 expert kernel would have quantized them.
"""

from __future__ import annotations

import socket
from typing import Dict, List, NamedTuple, Optional

import torch
import torch.distributed as dist

from ..config import DepDispatch, DepRows, WeightDtype, is_fp8
from ..eplb import SlotPlacement, eplb_placement, imbalance
from ..moe import ExpertWeights, select
from ..moe.backends import ExchangeBackend, ExchangeUnavailable
from ..moe.exchange import AllToAllExchange, CommClock, Traffic
from ..moe.kernels import QUANTIZED_INPUT
from ..moe.layer import LocalWeights, RoutedExperts
from ..moe.ops import FP8_BLOCK
from ..moe.replicas import ReplicaRouting, ReplicatedExchange
from ..placement import even_placement
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
    """CPU ranks: gloo with split sizes (occupied rows only), or the fixed-capacity gloo exchange when `requested`
    is "gloo"; ranks sharing a GPU: fixed-capacity gloo staged through the host; NCCL with one rank per GPU
    unless `requested` names another backend ("symm_mem": tried by apply_dep, NCCL if it does not initialise)."""
    if device.type != "cuda":
        return ExchangeBackend.GLOO if requested == "gloo" else ExchangeBackend.GLOO_SPLITS
    if requested == "gloo":
        raise ValueError("--dep-exchange gloo: the fixed-capacity gloo exchange runs on CPU ranks. Fix: --dep-exchange "
                         "nccl or symm_mem on GPUs.")
    if stage_on_host:
        return ExchangeBackend.GLOO
    return ExchangeBackend(requested) if requested not in (None, "auto") else ExchangeBackend.NCCL


class DispatchChoice(NamedTuple):
    dispatch: DepDispatch  # BF16 or FP8, never AUTO
    reason: str


def dispatch_choice(model: Decoder, requested: DepDispatch, device: torch.device) -> DispatchChoice:
    """What DEP's dispatch rows carry for this model (--dep-dispatch): FP8 needs FP8 experts and a hidden size that
    is a multiple of 128 (asked for, anything else raises ValueError; auto falls back to BF16 and says why); auto
    picks FP8 where the expert kernel chosen here quantizes its activations 1x128 anyway (kernels.QUANTIZED_INPUT).
    Every rank decides alike (the same model, the same kind of device), as the row layout needs."""
    blocks = model.moe_blocks()
    if requested is DepDispatch.BF16 or not blocks:
        return DispatchChoice(DepDispatch.BF16, "--dep-dispatch bf16" if blocks else "no MoE layer")
    hidden, weight_dtype = model.c.hidden, blocks[0].weight_dtype
    why_not = (f"the experts are {weight_dtype}: FP8 rows are for FP8 experts" if not is_fp8(weight_dtype) else
               f"hidden {hidden} is not a multiple of the {FP8_BLOCK}-column scale block" if hidden % FP8_BLOCK
               else None)
    if why_not is not None:
        if requested is DepDispatch.FP8:
            raise ValueError(f"--dep-dispatch fp8: {why_not}. Fix: --dep-dispatch auto or bf16"
                             + (f", or --weight-dtype {WeightDtype.FP8}." if not is_fp8(weight_dtype) else "."))
        return DispatchChoice(DepDispatch.BF16, why_not)
    if requested is DepDispatch.FP8:
        return DispatchChoice(DepDispatch.FP8, "--dep-dispatch fp8")
    probe = torch.empty(0, hidden, dtype=model.embed.weight.dtype, device=device)
    kernel = select(probe, ExpertWeights.from_tensors(blocks[0].expert_tensors([0])))
    if kernel.kernel in QUANTIZED_INPUT:
        return DispatchChoice(DepDispatch.FP8, f"FP8 experts on {kernel.kernel.value}, which quantizes its "
                                               "activations 1x128 anyway")
    return DispatchChoice(DepDispatch.BF16, f"the expert kernel here, {kernel.kernel.value}, takes unquantized "
                                            f"activations ({kernel.reason})")


class RowsChoice(NamedTuple):
    rows: DepRows  # BOUND or EXACT, never AUTO
    reason: str


# auto keeps the static bound while its temporaries take at most this share of the GPU memory free at setup
BOUND_SHARE = 0.25


def bound_bytes(model: Decoder, world: int, max_num_tokens: int) -> int:
    """Peak temporaries of one DEP expert step on the static bound: world x max_num_tokens x top-k assignments, each
    with its permuted row (H values, FP8 with 1x128 scales for FP8 experts), GEMM1's output (2I bf16), the SwiGLU'd
    row (I, FP8 with scales or activations) and GEMM2's output (H bf16)."""
    c, blocks = model.c, model.moe_blocks()
    act = model.embed.weight.element_size()
    fp8 = bool(blocks) and is_fp8(blocks[0].weight_dtype)
    per_value = 1 + 4 / FP8_BLOCK if fp8 else act
    per_row = c.hidden * per_value + 2 * c.moe_inter * 2 + c.moe_inter * per_value + c.hidden * 2
    return int(world * max_num_tokens * c.top_k * per_row)


def rows_choice(model: Decoder, requested: DepRows, world: int, max_num_tokens: int, device: torch.device,
                free_bytes: Optional[int] = None) -> RowsChoice:
    """How this rank sizes DEP's expert step (--dep-rows): auto takes the static bound (no host sync, capturable)
    while `bound_bytes` is at most BOUND_SHARE of the free GPU memory (`free_bytes`, default: measured now), else
    exact rows, and says why. CPU ranks are exact whatever is asked: reading a CPU count costs no device sync."""
    if device.type != "cuda":
        return RowsChoice(DepRows.EXACT, "CPU ranks read the received counts with no device sync")
    if requested is not DepRows.AUTO:
        return RowsChoice(DepRows(requested), f"--dep-rows {requested}")
    need = bound_bytes(model, world, max_num_tokens)
    free = torch.cuda.mem_get_info(device)[0] if free_bytes is None else free_bytes
    gib = f"{need / 2**30:.1f} GiB of temporaries on the static bound ({world} x {max_num_tokens} tokens x " \
          f"top-{model.c.top_k})"
    if need <= BOUND_SHARE * free:
        return RowsChoice(DepRows.BOUND, f"{gib} fit beside {free / 2**30:.1f} GiB free: no host sync, capturable")
    return RowsChoice(DepRows.EXACT, f"{gib} exceed {BOUND_SHARE:.0%} of the {free / 2**30:.1f} GiB free: one host "
                                     "read of the received counts per layer, buffers of the rows received")


def _exchange(owner, local_index, num_local, max_num_tokens, backend, device, clock, traffic,
              dispatch, dep_rows) -> AllToAllExchange:
    try:
        return AllToAllExchange(owner, local_index, num_local, max_num_tokens, backend, device, clock, traffic=traffic,
                                dispatch=dispatch, rows=dep_rows)
    except ExchangeUnavailable as e:
        if backend is not ExchangeBackend.SYMM_MEM:
            raise
        if dist.get_rank() == 0:
            print(f"WARNING: DEP exchange symm_mem unavailable ({e}); using nccl", flush=True)
        return AllToAllExchange(owner, local_index, num_local, max_num_tokens, ExchangeBackend.NCCL, device, clock,
                                traffic=traffic, dispatch=dispatch, rows=dep_rows)


def apply_dep(model: Decoder, clock: CommClock, max_num_tokens: int, stage_on_host: bool = False,
              backend: Optional[ExchangeBackend] = None, slots: Optional[Dict[int, SlotPlacement]] = None,
              keep_experts: bool = False, traffic: Optional[Traffic] = None,
              dispatch: DepDispatch = DepDispatch.AUTO, dep_rows: DepRows = DepRows.BOUND) -> ExchangeBackend:
    """Rewire every MoE block to expert parallelism over the initialised default group; returns the
    exchange backend in use. Collective (the symmetric-memory backend rendezvouses its buffers).

    slots: EPLB, per MoE layer index, the experts in each rank's slots (eplb.eplb_placement; the same number
    of slots per rank in every layer): a token's expert goes to one of its replicas. None: each rank owns
    a contiguous range of experts. keep_experts: keep the model's own expert tensors (a later apply_dep
    places the experts again, e.g. after EPLB measured the load), else drop them. traffic: where the exchange
    counts the bytes it moves (moe.exchange.Traffic). dispatch: BF16 or FP8 rows (`dispatch_choice` resolves
    auto). dep_rows: how a GPU rank sizes its expert step on the received rows (config.DepRows)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    device = clock.device
    backend = backend or exchange_backend(device, stage_on_host)
    if slots is None:
        placement = even_placement(model.c.num_experts, world)
        owner = torch.empty(model.c.num_experts, dtype=torch.long)
        local_index = torch.empty(model.c.num_experts, dtype=torch.long)
        for r, experts in enumerate(placement.ranks):
            owner[list(experts)] = r
            local_index[list(experts)] = torch.arange(len(experts))
        num_local = [len(placement.local_experts(r)) for r in range(world)]
        mine = {b.layer_idx: list(placement.local_experts(rank)) for b in model.moe_blocks()}
    else:
        per = {p.slots_per_rank for p in slots.values()}
        if len(per) != 1 or any(p.world != world for p in slots.values()):
            raise ValueError(f"EPLB slots: every layer needs the same slots per rank on {world} ranks, got {per}")
        (per,) = per
        flat = torch.arange(world * per)
        owner, local_index, num_local = flat // per, flat % per, [per] * world  # one exchange "expert" per slot
        mine = {b.layer_idx: list(slots[b.layer_idx].slots[rank]) for b in model.moe_blocks()}
    dispatch = dispatch_choice(model, dispatch, device).dispatch
    exchange = _exchange(owner, local_index, num_local, max_num_tokens, backend, device, clock, traffic, dispatch,
                         dep_rows)
    for b in model.moe_blocks():
        weights = ExpertWeights.from_tensors(b.expert_tensors(mine[b.layer_idx]))
        layer_exchange = exchange if slots is None else \
            ReplicatedExchange(exchange, ReplicaRouting(slots[b.layer_idx].replicas(), rank, device))
        b.experts = RoutedExperts(LocalWeights({b.layer_idx: weights}), layer_exchange)  # same kernel, same layout
        if not keep_experts:
            b.drop_experts()
    return exchange.backend


def measured_load(model: Decoder) -> Dict[int, List[float]]:
    """Collective: per MoE layer, tokens routed to each expert over every rank since `count_load` (EPLB's input)."""
    blocks = model.moe_blocks()
    local = torch.stack([b.experts.load for b in blocks])
    on = local if dist.get_backend() == "nccl" else local.cpu()
    dist.all_reduce(on)
    return {b.layer_idx: [float(v) for v in row] for b, row in zip(blocks, on.cpu().tolist())}


def apply_eplb(model: Decoder, clock: CommClock, max_num_tokens: int, redundant: int, stage_on_host: bool = False,
               backend: Optional[ExchangeBackend] = None, traffic: Optional[Traffic] = None,
               dispatch: DepDispatch = DepDispatch.AUTO, dep_rows: DepRows = DepRows.BOUND) -> Dict[str, object]:
    """Collective: EPLB for a model `apply_dep(keep_experts=True)` rewired and ran with `count_load` on: place
    `redundant` extra slots per rank from the measured load, then rewire it. Returns the busiest rank's load over
    the mean per layer, planned, with and without the replicas (`imbalance_eplb`, `imbalance_plain`)."""
    world = dist.get_world_size()
    loads = measured_load(model)
    per = -(-model.c.num_experts // world) + redundant
    slots = {lid: eplb_placement(load, world, per) for lid, load in loads.items()}
    plain = even_placement(model.c.num_experts, world)
    plain_loads = {lid: [sum(load[e] for e in plain.local_experts(r)) for r in range(world)]
                   for lid, load in loads.items()}
    apply_dep(model, clock, max_num_tokens, stage_on_host, backend, slots=slots, traffic=traffic, dispatch=dispatch,
              dep_rows=dep_rows)
    return {"slots_per_rank": per, "redundant_per_rank": redundant,
            "imbalance_eplb": [imbalance(slots[lid].rank_loads(loads[lid])) for lid in sorted(loads)],
            "imbalance_plain": [imbalance(plain_loads[lid]) for lid in sorted(loads)]}
