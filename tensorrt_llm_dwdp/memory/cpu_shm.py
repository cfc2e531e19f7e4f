"""Host shared memory for CPU ranks: a file in /dev/shm per piece, mapped MAP_SHARED by every rank.

The owner creates and sizes the file; peers map it by name. The name is unlinked as soon as every peer
has mapped it, so a crash later leaks nothing. Composite views are a reserved (PROT_NONE) range with each
piece's file mapped over it at a fixed address, the CPU twin of cuMemMap: the same piece planning and the
same mapping logic as on GPUs, at the page granularity. DWDP_SHM_GRANULARITY=<bytes> (a multiple of the page,
2097152 for an H200) lays pieces out as a GPU would, so CPU ranks rehearse a GPU deployment's padding and refusals.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import uuid

import torch

from ..bootstrap import JOB_ENV
from ..config import BackendKind

from .base import Composite, LocalShard, MemoryBackend, PeerShard, SharedHandle, SharedMemoryError, hostname

_SHM_DIR = "/dev/shm"
_MAP_FIXED = 0x10
_PROT_NONE = 0
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)


def shm_dir() -> str:
    return _SHM_DIR if os.path.isdir(_SHM_DIR) else os.environ.get("TMPDIR", "/tmp")


def piece_prefix(job: str = "") -> str:
    """File-name prefix of exported pieces: `dwdp-<job>-` under a launcher (which removes what ranks it had to
    kill left behind), else `dwdp-`."""
    return f"dwdp-{job}-" if job else "dwdp-"


def _map(path: str, nbytes: int) -> torch.Tensor:
    return torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8)


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


def _mmap(libc, addr, nbytes: int, prot: int, flags: int, fd: int) -> int:
    ptr = libc.mmap(addr, nbytes, prot, flags, fd, 0)
    if ptr in (None, ctypes.c_void_p(-1).value):
        err = ctypes.get_errno()
        raise SharedMemoryError(f"mmap of {nbytes} bytes failed: {os.strerror(err)}")
    return ptr


class CpuShmLocal(LocalShard):
    """A piece in a file: exported (named, until every peer has opened it) or private (anonymous memfd)."""

    def __init__(self, nbytes: int, exported: bool = True):
        self.nbytes = nbytes
        if exported:
            self.path = os.path.join(shm_dir(), f"{piece_prefix(os.environ.get(JOB_ENV, ''))}"
                                                  f"{os.getpid()}-{uuid.uuid4().hex[:12]}")
            self.fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            self.handle = SharedHandle(BackendKind.CPU_SHM.value, nbytes, self.path.encode(), hostname(), -1,
                                       os.getpid())
        else:
            self.path, self.handle = None, None
            self.fd = os.memfd_create("dwdp-slot")
        os.ftruncate(self.fd, nbytes)
        self.tensor = _map(self.path or f"/proc/self/fd/{self.fd}", nbytes)

    def after_peers_opened(self) -> None:
        if self.path is not None:
            os.unlink(self.path)
            self.path = None

    def close(self) -> None:
        self.after_peers_opened()
        self.tensor = None  # the mapping goes with the last view of it
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


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


class CpuComposite(Composite):
    def __init__(self, nbytes: int, pieces):
        self._libc, self.nbytes = _libc(), nbytes
        self.base = _mmap(self._libc, None, nbytes, _PROT_NONE,
                          mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE, -1)
        try:
            for offset, piece in pieces:
                if offset % mmap.PAGESIZE or offset + piece.nbytes > nbytes:
                    raise SharedMemoryError(f"piece at {offset} (+{piece.nbytes}) does not fit the page grid of a "
                                            f"{nbytes}-byte view")
                _mmap(self._libc, self.base + offset, piece.nbytes, mmap.PROT_READ | mmap.PROT_WRITE,
                      mmap.MAP_SHARED | _MAP_FIXED, piece.fd)
        except BaseException:
            self._libc.munmap(self.base, nbytes)
            raise
        self.tensor = torch.frombuffer((ctypes.c_uint8 * nbytes).from_address(self.base), dtype=torch.uint8)

    def close(self) -> None:
        if self.base is not None:
            self.tensor = None
            self._libc.munmap(self.base, self.nbytes)
            self.base = None


def _granularity() -> int:
    text = os.environ.get("DWDP_SHM_GRANULARITY", "")
    if not text:
        return mmap.PAGESIZE
    try:
        g = int(text)
    except ValueError:
        g = 0
    if g <= 0 or g % mmap.PAGESIZE:
        from ..config import DwdpConfigError
        raise DwdpConfigError("DWDP_SHM_GRANULARITY", text, f"it must be a positive multiple of the "
                              f"{mmap.PAGESIZE}-byte page", "unset it, or use 2097152 to lay pieces out as an H200 does")
    return g


class CpuShmBackend(MemoryBackend):
    kind = BackendKind.CPU_SHM
    def __init__(self):
        self.device = torch.device("cpu")
        self.granularity = _granularity()

    def allocate(self, nbytes: int) -> LocalShard:
        return CpuShmLocal(nbytes)

    def private(self, nbytes: int) -> LocalShard:
        return CpuShmLocal(nbytes, exported=False)

    def open(self, handle: SharedHandle) -> PeerShard:
        return CpuShmPeer(handle)

    def compose(self, nbytes: int, pieces) -> Composite:
        return CpuComposite(nbytes, pieces)

    def free_bytes(self) -> int:
        st = os.statvfs(shm_dir())
        return st.f_bavail * st.f_frsize
