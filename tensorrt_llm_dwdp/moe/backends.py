"""DEP exchange backends: which collective moves the rows, and the symmetric-memory buffers of the one-sided one.

Backends (`ExchangeBackend`):
  * NCCL: `all_to_all_single` of fixed-capacity blocks, one rank per GPU. The layout of DeepEP's
    low-latency mode (a fixed per-peer buffer of num_max_dispatch_tokens_per_rank rows, no count
    exchange), moved by NCCL instead of IBGDA/NVLink stores; it moves the whole capacity.
  * GLOO: the same protocol over gloo for CPU ranks, and for ranks sharing one GPU (NCCL refuses
    that), staging through host memory. A correctness path: it stands for no fast exchange.
  * GLOO_SPLITS: gloo with split sizes, CPU ranks' default: the W row counts go first (W integers), then
    only occupied rows move. On CPU tensors the counts are host values, so no device is synchronised.
  * SYMM_MEM: torch symmetric memory's `all_to_all_vdev` (NVSHMEM), with splits that stay on the
    device: only occupied rows move. Stands for DeepEP normal mode / TensorRT-LLM's
    NVLinkOneSided all-to-all (one-sided writes into peers' registered buffers, device-side counts).
"""

from __future__ import annotations

import enum
import os

import torch

from .rows import RowLayout


class ExchangeBackend(enum.Enum):
    NCCL = "nccl"
    GLOO = "gloo"
    GLOO_SPLITS = "gloo_splits"
    SYMM_MEM = "symm_mem"

    @property
    def occupied_only(self) -> bool:
        """Moves only occupied rows (else the fixed capacity: (W-1) x C rows each way per rank)."""
        return self in (ExchangeBackend.GLOO_SPLITS, ExchangeBackend.SYMM_MEM)


class ExchangeUnavailable(RuntimeError):
    """A backend cannot run here; the message says why."""


class SymmBuffers:
    """Symmetric-memory buffers and device-side splits for `all_to_all_vdev` (NVSHMEM).

    Buffers are flat bytes, so splits count bytes whichever unit the op takes for 1-D inputs.
    They are sized once for the largest row layout seen and reallocated (collectively: every rank
    sees the same layouts in the same order) when a wider one comes.
    """

    def __init__(self, world: int, capacity: int, device: torch.device, group):
        if device.type != "cuda":
            raise ExchangeUnavailable("symmetric memory needs GPU tensors")
        # NOTE: NVLink SHARP (NVLS) and multicast objects fail to initialise on the machines this runs on;
        # plain NVLink peer writes are what the exchange needs.
        os.environ.setdefault("NVSHMEM_DISABLE_NVLS", "1")
        os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
        try:
            import torch.distributed._symmetric_memory as symm_mem
            if hasattr(symm_mem, "is_nvshmem_available") and not symm_mem.is_nvshmem_available():
                raise ExchangeUnavailable("torch reports NVSHMEM unavailable")
            if not hasattr(torch.ops.symm_mem, "all_to_all_vdev"):
                raise ExchangeUnavailable(f"torch {torch.__version__} has no symm_mem.all_to_all_vdev")
            symm_mem.set_backend("NVSHMEM")
            import torch.distributed as dist
            self.group_name = (group or dist.group.WORLD).group_name
            symm_mem.enable_symm_mem_for_group(self.group_name)
        except ExchangeUnavailable:
            raise
        except Exception as e:  # noqa: BLE001 - any failure to initialise means: use another backend
            raise ExchangeUnavailable(f"symmetric memory did not initialise: {type(e).__name__}: {e}") from None
        self.symm_mem, self.world, self.capacity, self.device = symm_mem, world, capacity, device
        self._nbytes = 0
        self._splits = self._splits_offsets = None

    def _empty(self, nbytes: int) -> torch.Tensor:
        t = self.symm_mem.empty(nbytes, dtype=torch.uint8, device=self.device)
        self.symm_mem.rendezvous(t, self.group_name)
        return t

    def _ensure(self, row_bytes: int) -> None:
        nbytes = self.world * self.capacity * row_bytes
        if nbytes <= self._nbytes:
            return
        self._send, self._recv = self._empty(nbytes), self._empty(nbytes)
        self._nbytes = nbytes
        if self._splits is None:
            self._splits = self.symm_mem.empty(self.world, dtype=torch.int64, device=self.device)
            self._splits_offsets = self.symm_mem.empty(2, self.world, dtype=torch.int64, device=self.device)
            self.symm_mem.rendezvous(self._splits, self.group_name)
            self.symm_mem.rendezvous(self._splits_offsets, self.group_name)

    def send(self, layout: RowLayout) -> torch.Tensor:
        self._ensure(max(layout.nbytes, layout.out_row_bytes))  # combine rows reuse the buffers
        return self._send[:self.world * self.capacity * layout.nbytes]

    def _vdev(self, row_bytes: int, counts: torch.Tensor) -> torch.Tensor:
        self._splits.copy_(counts * row_bytes)
        torch.ops.symm_mem.all_to_all_vdev(self._send, self._recv, self._splits, self._splits_offsets,
                                           self.group_name)
        return self._splits_offsets[0] // row_bytes

    def dispatch(self, layout: RowLayout, counts: torch.Tensor):
        recv_counts = self._vdev(layout.nbytes, counts)
        return self._recv[:self.world * self.capacity * layout.nbytes].clone(), recv_counts

    def combine(self, y_rows: torch.Tensor, recv_counts: torch.Tensor) -> torch.Tensor:
        row_bytes = y_rows.shape[1] * y_rows.element_size()
        n = y_rows.numel() * y_rows.element_size()
        self._send[:n].copy_(y_rows.contiguous().view(-1).view(torch.uint8))
        self._vdev(row_bytes, recv_counts)
        return self._recv[:n].clone().view(y_rows.dtype).view(y_rows.shape)
