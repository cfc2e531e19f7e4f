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
            raise SharedMemoryError(f"peer rank {peer_rank} exported '{handle.kind}' memory but this rank uses "
                               f"'{self.kind}': every rank of a DWDP group must use the same memory_backend")


def hostname() -> str:
    return socket.gethostname()
