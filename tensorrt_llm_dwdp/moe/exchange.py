"""DEP's token exchange: dispatch one row per (token, destination rank), combine one row back.

Attention-DP + expert parallel as serving engines run it. A token's hidden row travels to each rank
that owns at least one of its top-k experts, once, with the local expert ids and routing weights
of that rank's experts as side payload; the receiver runs its experts on the row and reduces them
with the routing weights (`expert_compute`, fused weighted combine), and sends one row back per
(token, rank); the sender sums at most `world` rows per token in fp32.

A token reaches a rank at most once, so `capacity` (= max_num_tokens) rows per peer can never
overflow: equal-split collectives need no count exchange and no host synchronisation, and the
step can be captured in a CUDA graph. The index work (`plan_dispatch`) is pure tensor math.

The receiver hands its expert step the received rows only (`compact_received`: occupancy from the ids,
a stable sort of it, no hidden row moved): the step reads them in place from the receive buffer. On a GPU
(`DepRows.BOUND`, the default) the shapes stay the receive buffer's (no host sync, capturable in a CUDA graph):
the grouped GEMMs stop at the device-side expert ends and the permute and BF16 SwiGLU kernels at the device-side
count of real assignments, but the temporaries are sized for the whole buffer. `DepRows.EXACT` (always on CPU
ranks) reads the two counts on the host once per layer and sizes every buffer to the received (row, expert)
pairs, for runs where the bound's temporaries do not fit.

Dispatch rows (`moe.rows.RowLayout`) carry the activations as they are, or, with FP8 dispatch (for FP8
experts), 1x128-quantized e4m3 values with their fp32 scales: the sender quantizes its T token rows once and
the receiver's FP8 expert kernel takes them as they are, so the experts see what local would have quantized.
Combine rows are always the activations' dtype. Backends (which collective moves the rows): moe/backends.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Union

import torch

from ..config import DepDispatch, DepRows
from .backends import ExchangeBackend, ExchangeUnavailable, SymmBuffers
from .rows import QuantizedRows, RowLayout


class Traffic:
    """Bytes a rank's exchanges sent to other ranks, and the least they could have sent: one row per (token,
    destination rank) out (hidden values, local ids, weights) and one hidden row back. Attributed to the
    sender of the tokens (a row's round trip), so the ranks' sums are the group's totals. Device scalars,
    accumulated without a host sync; `take` reads and resets them."""

    def __init__(self):
        self._moved = self._min = 0

    def add(self, moved, minimum) -> None:
        self._moved, self._min = self._moved + moved, self._min + minimum

    def take(self) -> "TrafficBytes":
        """Bytes since the last call."""
        out = TrafficBytes(int(self._moved), int(self._min))
        self._moved = self._min = 0
        return out


class TrafficBytes(NamedTuple):
    moved: int
    minimum: int


@dataclass(frozen=True)
class DispatchPlan:
    """Where each (token, rank) row goes; all [.] shapes are static given T, K, world, capacity.

    slot [T, W] int64: send-buffer row of (token t, rank r), or -1 where t has no expert on r.
    send_token [W*C] int64: the token each send row holds (0 in empty rows: ids mark them unused).
    local_ids [W*C, K] int32: receiver-local expert ids; the receiver's sentinel where unused.
    weights [W*C, K] float32: routing weights, 0 where unused.
    counts [W] int64: rows per destination (device; the vdev backend's splits).
    """

    slot: torch.Tensor
    send_token: torch.Tensor
    local_ids: torch.Tensor
    weights: torch.Tensor
    counts: torch.Tensor


def plan_dispatch(topk_ids: torch.Tensor, topk_weights: torch.Tensor, owner: torch.Tensor, local_index: torch.Tensor,
                  sentinel: torch.Tensor, capacity: int, packed: bool = False) -> DispatchPlan:
    """Index plan of one dispatch. topk_ids [T, K] global ids; owner [E] rank of each expert;
    local_index [E] its id on that rank; sentinel [W] each rank's "no expert" id (its expert count).

    Rows for rank r fill a block of the send buffer in token order: block r starts at r * capacity
    (equal split), or, with packed=True, right after rank r-1's rows (vdev splits).
    """
    tokens, k = topk_ids.shape
    world = sentinel.numel()
    if tokens > capacity:
        raise ValueError(f"max_num_tokens={capacity}: a batch has {tokens} tokens; the fixed-capacity exchange "
                         "holds max_num_tokens rows per peer. Fix: raise --max-num-tokens")
    device = topk_ids.device
    dest = owner[topk_ids]  # [T, K]
    goes = torch.zeros(tokens, world, dtype=torch.bool, device=device)
    goes.scatter_(1, dest, True)
    counts = goes.sum(0)
    pos = torch.cumsum(goes.long(), 0) - 1  # [T, W] row within rank r's block
    if packed:
        base = torch.cumsum(counts, 0) - counts
    else:
        base = torch.arange(world, device=device) * capacity
    slot = torch.where(goes, base[None, :] + pos, -1)

    rows = world * capacity
    flat = torch.where(goes, slot, rows).reshape(-1)  # unused (token, rank) pairs go to a dump row
    ranks = torch.arange(world, device=device)
    on_rank = dest[:, None, :] == ranks[None, :, None]  # [T, W, K]
    ids_tr = torch.where(on_rank, local_index[topk_ids][:, None, :], sentinel[None, :, None])
    w_tr = torch.where(on_rank, topk_weights.float()[:, None, :], 0.0)
    ids = sentinel.repeat_interleave(capacity)[:, None].expand(rows, k).to(torch.int32)
    ids = torch.cat([ids, ids.new_zeros(1, k)])
    ids.index_copy_(0, flat, ids_tr.reshape(-1, k).to(torch.int32))
    weights = torch.zeros(rows + 1, k, dtype=torch.float32, device=device)
    weights.index_copy_(0, flat, w_tr.reshape(-1, k))
    send_token = torch.zeros(rows + 1, dtype=torch.long, device=device)
    send_token.index_copy_(0, flat, torch.arange(tokens, device=device).repeat_interleave(world))
    return DispatchPlan(slot, send_token[:rows], ids[:rows], weights[:rows], counts)


@dataclass(frozen=True)
class Dispatched:
    """What a rank received, compacted: the expert step reads only the M received rows.

    rows [R, H]: the receive buffer's hidden values (R = world * capacity; with split sizes, the rows received),
    a strided view read in place; QuantizedRows (e4m3 values and their 1x128 scales, views) with FP8 dispatch;
    row_index [M] int64: the receive rows the expert step computes, received rows first (in peer order);
    local_ids [M, K] int32 / weights [M, K] fp32: their local expert ids (== num_local_experts for "not on
    this rank") and routing weights; num_rows: a device scalar, how many rows were received.
    M == num_rows with exact rows (`DepRows`), and `assignments` is the number of (row, local expert) pairs, read
    on the host with it; with bound rows (GPUs only) M stays R, in receive order, rows nobody sent carry no
    expert, and `assignments` is None. `plan` and `recv_counts` (vdev only) are what combine needs to send the
    results back."""

    rows: Union[torch.Tensor, QuantizedRows]
    row_index: torch.Tensor
    local_ids: torch.Tensor
    weights: torch.Tensor
    num_rows: torch.Tensor
    plan: DispatchPlan
    recv_counts: Optional[torch.Tensor] = None
    assignments: Optional[int] = None


@dataclass(frozen=True)
class Received:
    """The rows an expert step computes (see Dispatched): row_index [M], local_ids [M, K], num_rows (device),
    assignments (host int, exact rows only)."""

    row_index: torch.Tensor
    local_ids: torch.Tensor
    num_rows: torch.Tensor
    assignments: Optional[int] = None


def compact_received(ids: torch.Tensor, sentinel: int, occupied: torch.Tensor, exact: bool = True) -> Received:
    """Received rows first: row_index [M] int64, local_ids [M, K] int32, num_rows a device scalar.

    ids [R, K] the receive buffer's local expert ids; occupied [R] bool the rows a peer filled. A stable sort
    of the occupancy keeps peer order; M as in `Dispatched`. Index work only (R ints), no hidden row moves.
    exact: M = the rows received, with the (row, local expert) count, both read on the host at once (one sync
    on a GPU); else every row in receive order, unoccupied ones masked to "no expert" (static shapes)."""
    num_rows = occupied.sum()
    if not exact:
        local_ids = torch.where(occupied[:, None], ids, sentinel).to(torch.int32)
        return Received(torch.arange(ids.shape[0], device=ids.device), local_ids, num_rows)
    real = ((ids < sentinel) & occupied[:, None]).sum()
    m, assignments = torch.stack([num_rows, real]).tolist()
    order = torch.argsort((~occupied).to(torch.uint8), stable=True)[:m]
    local_ids = torch.where(occupied[order, None], ids.index_select(0, order), sentinel).to(torch.int32)
    return Received(order, local_ids, num_rows, assignments)


class CommClock:
    """Time spent in the exchange's collectives. GPU tensors: CUDA events around each collective
    on the current stream (device time, read once per step); CPU: host timers. `host_s` is always
    the host time inside the calls."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.host_s = 0.0
        self._events: List = []
        self._used = 0
        self._host_device_s = 0.0

    def _event(self):
        if self._used == len(self._events):
            self._events.append(torch.cuda.Event(enable_timing=True))
        self._used += 1
        return self._events[self._used - 1]

    def run(self, fn, *args, **kwargs):
        t0 = time.perf_counter()
        if self.device.type == "cuda":
            start, end = self._event(), self._event()
            start.record()
            out = fn(*args, **kwargs)
            end.record()
        else:
            out = fn(*args, **kwargs)
            self._host_device_s += time.perf_counter() - t0
        self.host_s += time.perf_counter() - t0
        return out

    def take_device_s(self) -> float:
        """Device seconds in collectives since the last call (waits for the recorded events)."""
        total = self._host_device_s
        if self._used:
            self._events[self._used - 1].synchronize()
            total += sum(self._events[i].elapsed_time(self._events[i + 1]) for i in range(0, self._used, 2)) / 1e3
        self._used, self._host_device_s = 0, 0.0
        return total


class AllToAllExchange:
    """Dispatch/combine over the default torch.distributed group (or `group`).

    owner [E] / local_index [E]: expert placement (rank and id on that rank); capacity: the most
    tokens a rank sends in one step (max_num_tokens). dispatch: BF16 (rows as they are) or FP8 (1x128-quantized
    rows and their scales; the caller resolves AUTO, runtime.dep.dispatch_choice). rows: how a GPU rank sizes
    its expert step (DepRows). See moe/backends.py for the backends.
    """

    def __init__(self, owner: torch.Tensor, local_index: torch.Tensor, num_local: List[int], capacity: int,
                 backend: ExchangeBackend, device: torch.device, clock: Optional[CommClock] = None, group=None,
                 traffic: Optional[Traffic] = None, dispatch: DepDispatch = DepDispatch.BF16,
                 rows: DepRows = DepRows.BOUND):
        if dispatch is DepDispatch.AUTO or rows is DepRows.AUTO:
            raise ValueError("the exchange takes a resolved dispatch (bf16 or fp8) and rows (bound or exact), not auto")
        self.dispatch_dtype, self.rows = dispatch, DepRows(rows)
        import torch.distributed as dist
        self.dist, self.group = dist, group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.traffic = traffic if traffic is not None else Traffic()
        self.device = torch.device(device)
        if len(num_local) != self.world:
            raise ValueError(f"num_local lists {len(num_local)} ranks, the group has {self.world}")
        self.owner, self.local_index = owner.to(self.device), local_index.to(self.device)
        self.sentinel = torch.tensor(num_local, dtype=torch.long, device=self.device)
        self.capacity, self.backend = int(capacity), backend
        self._own_sentinel = int(num_local[dist.get_rank(group)])
        self.clock = clock if clock is not None else CommClock(self.device)
        self._symm = None
        if backend is ExchangeBackend.SYMM_MEM:
            self._symm = SymmBuffers(self.world, self.capacity, self.device, group)
        elif backend is ExchangeBackend.NCCL and self.device.type != "cuda":
            raise ExchangeUnavailable("the NCCL exchange needs GPU tensors; use gloo on CPU ranks")
        elif backend is ExchangeBackend.GLOO_SPLITS and self.device.type != "cpu":
            raise ExchangeUnavailable("gloo with split sizes reads the row counts on the host: CPU tensors only")

    # ---- the collectives ----------------------------------------------------------------------

    def _all_to_all(self, buf: torch.Tensor) -> torch.Tensor:
        """Equal-split all-to-all of a [W*C, ...] buffer."""
        if self.backend is ExchangeBackend.GLOO and buf.is_cuda:
            def staged(b):
                host = b.cpu()
                out = torch.empty_like(host)
                self.dist.all_to_all_single(out, host, group=self.group)
                return out.to(b.device)
            return self.clock.run(staged, buf)
        out = torch.empty_like(buf)
        self.clock.run(self.dist.all_to_all_single, out, buf, group=self.group)
        return out

    def _split_all_to_all(self, buf: torch.Tensor, send: List[int], recv: List[int]) -> torch.Tensor:
        """All-to-all of the first sum(send) rows of buf, send[r] of them to rank r; returns [sum(recv), ...]."""
        out = buf.new_empty(sum(recv), *buf.shape[1:])
        self.clock.run(self.dist.all_to_all_single, out, buf[:sum(send)], output_split_sizes=recv,
                       input_split_sizes=send, group=self.group)
        return out

    def _count(self, counts: torch.Tensor, layout: RowLayout) -> None:
        """Traffic of one dispatch and its combine (see Traffic), counts [W] this rank's rows per destination. The
        minimum is at this dispatch's row size: FP8 rows for an FP8 dispatch."""
        out_row = layout.out_row_bytes
        peers = counts.sum() - counts[self.rank]
        minimum = peers * (layout.nbytes + out_row)
        if self.backend is ExchangeBackend.GLOO_SPLITS:  # the row counts go first: W int64, one to each peer
            self.traffic.add(minimum + 8 * (self.world - 1), minimum)
        elif self.backend.occupied_only:
            self.traffic.add(minimum, minimum)
        else:
            self.traffic.add((self.world - 1) * self.capacity * (layout.nbytes + out_row), minimum)

    # ---- dispatch / combine -------------------------------------------------------------------

    def dispatch(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> Dispatched:
        """x [T, H] (T <= capacity), topk_ids [T, K], topk_weights [T, K] -> rows this rank computes. FP8 dispatch:
        x's T rows are quantized once (ops.quantize_fp8), then gathered into the send rows with their scales."""
        k = topk_ids.shape[1]
        packed = self.backend.occupied_only
        plan = plan_dispatch(topk_ids, topk_weights, self.owner, self.local_index, self.sentinel, self.capacity,
                             packed=packed)
        rows = self.world * self.capacity
        layout = RowLayout(x.shape[1], x.dtype, k, fp8=self.dispatch_dtype is DepDispatch.FP8)
        send = self._symm.send(layout) if self._symm is not None else \
            torch.empty(rows, layout.nbytes, dtype=torch.uint8, device=x.device)
        send = send.view(rows, layout.nbytes)
        layout.fill(send, x, plan.send_token)
        layout.ids(send).copy_(plan.local_ids)
        layout.weights(send).copy_(plan.weights)
        recv_counts = None
        self._count(plan.counts, layout)
        if self.backend is ExchangeBackend.GLOO_SPLITS:
            recv_counts = torch.empty_like(plan.counts)
            self.clock.run(self.dist.all_to_all_single, recv_counts, plan.counts, group=self.group)
            recv = self._split_all_to_all(send, plan.counts.tolist(), recv_counts.tolist())
            occupied = torch.ones(recv.shape[0], dtype=torch.bool)  # exactly the rows peers sent
        elif packed:
            recv, recv_counts = self.clock.run(self._symm.dispatch, layout, plan.counts)
            recv = recv.view(rows, layout.nbytes)
            occupied = torch.arange(rows, device=x.device) < recv_counts.sum()  # packed from row 0
        else:
            recv = self._all_to_all(send)
            # a peer's block holds its rows first and "no expert" rows after them
            occupied = (layout.ids(recv) < self._own_sentinel).any(1)
        exact = not recv.is_cuda or self.rows is DepRows.EXACT
        got = compact_received(layout.ids(recv), self._own_sentinel, occupied, exact)
        weights = layout.weights(recv).index_select(0, got.row_index)
        return Dispatched(layout.x(recv), got.row_index, got.local_ids, weights, got.num_rows, plan, recv_counts,
                          got.assignments)

    def combine(self, y: torch.Tensor, dispatched: Dispatched) -> torch.Tensor:
        """y [M, H]: the receiver's weighted expert sums of the rows it computed (dispatched.row_index) -> [T, H]
        for this rank's own tokens: each token's rows from every rank it went to, summed in fp32."""
        from .ops import combine
        if self.backend is ExchangeBackend.GLOO_SPLITS:  # every received row was computed, in receive order
            back = self._split_all_to_all(y, dispatched.recv_counts.tolist(), dispatched.plan.counts.tolist())
        else:
            y_rows = y
            if dispatched.assignments is not None:  # exact rows: back into receive order; rows nobody sent stay
                # unwritten (their senders never read them)
                y_rows = y.new_empty(self.world * self.capacity, y.shape[1])
                y_rows.index_copy_(0, dispatched.row_index, y)
            if self._symm is not None:
                back = self.clock.run(self._symm.combine, y_rows, dispatched.recv_counts)
            else:
                back = self._all_to_all(y_rows.contiguous())
        slot = dispatched.plan.slot
        tokens = slot.shape[0]
        if tokens == 0:
            return y.new_zeros(0, y.shape[1])
        used = slot >= 0
        return combine(back, torch.where(used, slot, -1).reshape(-1), used.float().reshape(-1), self.world)

    def run(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, compute) -> torch.Tensor:
        """The layer composition's token-exchange slot (moe.layer.TokenExchange): dispatch, this rank's experts
        on the received rows, combine."""
        got = self.dispatch(x, topk_ids, topk_weights)
        # bound rows promised no host sync: the expert kernels keep their static shapes too
        return self.combine(compute(got.rows, got.local_ids, got.weights, got.row_index, got.assignments,
                                    exact=got.assignments is not None), got)
