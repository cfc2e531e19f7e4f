"""One interface for every kind of shared expert memory.

A rank allocates the pieces of its shard through a backend, exports each as a `SharedHandle` (plain bytes
plus where it lives), hands the handles to its peers once at setup, and each peer opens them into a
`PeerShard` (a copy source). `compose` joins pieces (its own shard's and private slot pieces) into one
virtual range, so a layer's experts read as one ordinary tensor. Backends own pointers and mappings; they
know nothing of MPI or models. Teardown is explicit: peers close their mappings before owners free.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Optional

import torch


class SharedMemoryError(RuntimeError):
    """Shared memory could not be allocated, exported or opened."""


@dataclass(frozen=True)
class SharedHandle:
    """An exported shard: the backend's opaque payload and where the memory lives."""

    kind: str
    nbytes: int
    payload: bytes
    host: str
    device: int  # CUDA device ordinal of the owner, -1 for host memory
    pid: int


class LocalShard:
    """Memory this rank owns and exports. `tensor` is a flat uint8 view of all of it."""

    tensor: torch.Tensor
    handle: SharedHandle

    def after_peers_opened(self) -> None:
        """Called once every peer has opened the handle (e.g. to unlink a file name)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Composite:
    """Pieces mapped side by side into one reserved virtual range. `tensor` is a flat uint8 view of it."""

    tensor: torch.Tensor

    def close(self) -> None:
        raise NotImplementedError


class PeerShard:
    """A peer's shard mapped into this process. `tensor` is a flat uint8 view."""

    tensor: torch.Tensor
    handle: SharedHandle

    def close(self) -> None:
        raise NotImplementedError


class MemoryBackend:
    """Allocate, export and open shards of one kind of memory."""

    kind: str = ""
    device: torch.device

    granularity: int  # a composed piece starts and (but for the last) ends on a multiple of this
    composes_exports: bool = True  # False: compose() maps a private copy of an exported piece (cuda_ipc)

    def allocate(self, nbytes: int) -> LocalShard:
        """Exported memory (a piece of this rank's shard); `handle` opens it in a peer."""
        raise NotImplementedError

    def private(self, nbytes: int) -> LocalShard:
        """Memory only this process maps (a prefetch slot's piece); its handle is None."""
        raise NotImplementedError

    def open(self, handle: SharedHandle) -> PeerShard:
        raise NotImplementedError

    def compose(self, nbytes: int, pieces) -> Composite:
        """Map each (offset, LocalShard) of `pieces` at its offset in a new range of `nbytes` bytes."""
        raise NotImplementedError

    def exports_done(self) -> None:
        """Every peer has opened every handle: release what only the exchange needed (names, sockets)."""

    def free_bytes(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        """Free what the backend itself holds (after every composite and piece of it is closed)."""
        self.exports_done()

    def check_reachable(self, handle: SharedHandle, peer_rank: int) -> None:
        """Raise with a clear message if this process cannot map `handle`."""
        self._check_kind(handle, peer_rank)
        if handle.host != hostname():
            raise SharedMemoryError(
                f"peer rank {peer_rank} is on host {handle.host!r}, this rank on {hostname()!r}: a DWDP group "
                "must lie within one NVLink domain (one node for IPC handles and file descriptors; "
                "memory_backend='cuda_fabric' across nodes); choose group_size so that groups do not span nodes")

    def _check_kind(self, handle: SharedHandle, peer_rank: int) -> None:
        if handle.kind != self.kind:
            raise SharedMemoryError(f"peer rank {peer_rank} exported {handle.kind!r} memory but this rank uses "
                               f"{self.kind!r}: every rank of a DWDP group must use the same memory_backend")


def hostname() -> str:
    return socket.gethostname()


def check_backend_available(kind: str) -> None:
    """Raise DwdpConfigError when `kind` names a CUDA backend and no GPU is visible (asks the driver
    whether a device exists; allocates nothing)."""
    if kind.startswith("cuda") and not torch.cuda.is_available():
        from ..config import DwdpConfigError
        raise DwdpConfigError("memory_backend", kind, "needs a CUDA GPU and none is visible",
                              "use memory_backend cpu_shm (or auto) on a CPU machine")


def get_backend(kind: str = "auto", device: Optional[torch.device] = None) -> MemoryBackend:
    """'auto' picks cuda_vmm for a CUDA device (or when one is present), cpu_shm otherwise: VMM memory
    composes in place, legacy IPC memory needs a second copy of the shard for the composite views.

    cuda_ipc: legacy IPC handles. cuda_vmm: cuMemCreate + POSIX file descriptors (one node).
    cuda_fabric: cuMemCreate + fabric handles (multi-node NVLink domains)."""
    check_backend_available(kind)
    if kind == "auto":
        if device is not None:
            kind = "cuda_vmm" if torch.device(device).type == "cuda" else "cpu_shm"
        else:
            kind = "cuda_vmm" if torch.cuda.is_available() else "cpu_shm"
    if kind == "cpu_shm":
        from .cpu_shm import CpuShmBackend
        return CpuShmBackend()
    if kind == "cuda_ipc":
        from .cuda_ipc import CudaIpcBackend
        return CudaIpcBackend(device)
    if kind in ("cuda_vmm", "cuda_fabric"):
        from .cuda_vmm import CudaVmmBackend
        return CudaVmmBackend(device, fabric=kind == "cuda_fabric")
    raise ValueError(f"memory_backend={kind!r}: unknown; use auto, cpu_shm, cuda_ipc, cuda_vmm or cuda_fabric")
