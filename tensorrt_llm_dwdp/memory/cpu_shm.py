"""Host shared memory for CPU ranks: a file in /dev/shm mapped MAP_SHARED by every rank.

The owner creates and sizes the file; peers map it by name. The name is unlinked as
soon as every peer has mapped it, so a crash later leaks nothing.
"""

from __future__ import annotations

import os
import uuid

import torch

from .base import LocalShard, MemoryBackend, SharedMemoryError, PeerShard, SharedHandle, hostname

_SHM_DIR = "/dev/shm"


def _shm_dir() -> str:
    return _SHM_DIR if os.path.isdir(_SHM_DIR) else os.environ.get("TMPDIR", "/tmp")


def _map(path: str, nbytes: int) -> torch.Tensor:
    return torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8)


class CpuShmLocal(LocalShard):
    def __init__(self, nbytes: int):
        self.path = os.path.join(_shm_dir(), f"dwdp-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, nbytes)
        finally:
            os.close(fd)
        self.tensor = _map(self.path, nbytes)
        self.handle = SharedHandle("cpu_shm", nbytes, self.path.encode(), hostname(), -1, os.getpid())
        self._linked = True

    def after_peers_opened(self) -> None:
        if self._linked:
            os.unlink(self.path)
            self._linked = False

    def close(self) -> None:
        self.after_peers_opened()
        self.tensor = None  # the mapping goes with the last view of it


class CpuShmPeer(PeerShard):
    def __init__(self, handle: SharedHandle):
        path = handle.payload.decode()
        if not os.path.exists(path):
            raise SharedMemoryError(f"shared memory {path} of pid {handle.pid} is gone: the peer exited or "
                               "unlinked it before this rank opened it")
        self.handle = handle
        self.tensor = _map(path, handle.nbytes)

    def close(self) -> None:
        self.tensor = None


class CpuShmBackend(MemoryBackend):
    kind = "cpu_shm"

    def __init__(self):
        self.device = torch.device("cpu")

    def allocate(self, nbytes: int) -> LocalShard:
        return CpuShmLocal(nbytes)

    def open(self, handle: SharedHandle) -> PeerShard:
        return CpuShmPeer(handle)

    def free_bytes(self) -> int:
        st = os.statvfs(_shm_dir())
        return st.f_bavail * st.f_frsize
