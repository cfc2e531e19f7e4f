"""CUDA IPC: the owner's cudaMalloc'd shard, exported with cudaIpcGetMemHandle and mapped
by peers with cudaIpcOpenMemHandle (through cuda.bindings).

The shard is allocated here rather than by torch's caching allocator: a handle then
names exactly this allocation (offset 0), and expandable segments cannot break it.
"""

from __future__ import annotations

import ctypes
import os
from typing import Optional

import torch

from .base import LocalShard, MemoryBackend, PeerShard, SharedHandle, SharedMemoryError, hostname

IPC_HANDLE_BYTES = 64


def _cudart():
    try:
        from cuda.bindings import runtime
    except ImportError:  # cuda-python < 12.6 names the module cuda.cudart
        from cuda import cudart as runtime
    return runtime


def _check(result, what: str):
    err, *rest = result if isinstance(result, tuple) else (result,)
    rt = _cudart()
    if err != rt.cudaError_t.cudaSuccess:
        _, name = rt.cudaGetErrorName(err)
        raise SharedMemoryError(f"{what} failed: {name.decode() if isinstance(name, bytes) else name}")
    return rest[0] if len(rest) == 1 else tuple(rest)


def _as_cuda_tensor(ptr: int, nbytes: int, device: int, owner) -> torch.Tensor:
    """A uint8 tensor over raw device memory; `owner` is kept alive by the tensor."""

    class _Span:
        __cuda_array_interface__ = {"shape": (nbytes,), "typestr": "|u1", "data": (ptr, False),
                                    "version": 3, "strides": None}

    span = _Span()
    span.owner = owner
    with torch.cuda.device(device):
        return torch.as_tensor(span, device=f"cuda:{device}")


def handle_to_bytes(handle) -> bytes:
    return ctypes.string_at(handle.getPtr(), IPC_HANDLE_BYTES)


def handle_from_bytes(payload: bytes):
    if len(payload) != IPC_HANDLE_BYTES:
        raise SharedMemoryError(f"CUDA IPC handle must be {IPC_HANDLE_BYTES} bytes, got {len(payload)}")
    h = _cudart().cudaIpcMemHandle_t()
    ctypes.memmove(h.getPtr(), payload, IPC_HANDLE_BYTES)
    return h


class _Mapping:
    """Device memory this process must release explicitly: `_release(ptr)` after all work on it."""

    ptr = None
    device: int

    def close(self) -> None:
        if self.ptr is None:
            return
        torch.cuda.synchronize(self.device)
        self.tensor = None
        self._release(self.ptr)
        self.ptr = None


class CudaIpcLocal(_Mapping, LocalShard):
    def __init__(self, nbytes: int, device: int):
        rt = _cudart()
        _check(rt.cudaSetDevice(device), "cudaSetDevice")
        self.ptr = _check(rt.cudaMalloc(nbytes), f"cudaMalloc({nbytes})")
        self.device = device
        handle = _check(rt.cudaIpcGetMemHandle(self.ptr), "cudaIpcGetMemHandle")
        self.handle = SharedHandle("cuda_ipc", nbytes, handle_to_bytes(handle), hostname(), device, os.getpid())
        self.tensor = _as_cuda_tensor(int(self.ptr), nbytes, device, self)

    @staticmethod
    def _release(ptr) -> None:
        _check(_cudart().cudaFree(ptr), "cudaFree")


class CudaIpcPeer(_Mapping, PeerShard):
    def __init__(self, handle: SharedHandle, device: int):
        rt = _cudart()
        _check(rt.cudaSetDevice(device), "cudaSetDevice")
        self.ptr = _check(rt.cudaIpcOpenMemHandle(handle_from_bytes(handle.payload),
                                                  rt.cudaIpcMemLazyEnablePeerAccess),
                          f"cudaIpcOpenMemHandle (peer pid {handle.pid}, device {handle.device})")
        self.handle, self.device = handle, device
        self.tensor = _as_cuda_tensor(int(self.ptr), handle.nbytes, device, self)

    @staticmethod
    def _release(ptr) -> None:
        _check(_cudart().cudaIpcCloseMemHandle(ptr), "cudaIpcCloseMemHandle")


class CudaBackend(MemoryBackend):
    """What every device-memory backend shares: the device, free memory, peer reachability."""

    kind = "cuda"

    def __init__(self, device: Optional[torch.device] = None):
        if not torch.cuda.is_available():
            raise SharedMemoryError(f"memory_backend='{self.kind}' needs a CUDA GPU; none is visible "
                                    "(use memory_backend='cpu_shm' for CPU ranks)")
        index = torch.cuda.current_device() if device is None else torch.device(device).index
        self.device = torch.device("cuda", torch.cuda.current_device() if index is None else index)

    def free_bytes(self) -> int:
        free, _ = torch.cuda.mem_get_info(self.device)
        return free

    def check_reachable(self, handle: SharedHandle, peer_rank: int) -> None:
        super().check_reachable(handle, peer_rank)
        if handle.device != self.device.index:
            ok = _check(_cudart().cudaDeviceCanAccessPeer(self.device.index, handle.device),
                        "cudaDeviceCanAccessPeer")
            if not ok:
                raise SharedMemoryError(
                    f"GPU {self.device.index} cannot access GPU {handle.device} of peer rank {peer_rank} "
                    "(no NVLink/P2P path): a DWDP group must lie within one NVLink domain; "
                    "choose group_size and the rank-to-GPU mapping so that a group's GPUs are peers")


class CudaIpcBackend(CudaBackend):
    """Legacy IPC exports; composite views need VMM memory, so each exported piece gets a private VMM twin
    (a second copy of the shard, reported at setup): cuda_vmm composes in place and is the default."""

    kind = "cuda_ipc"
    composes_exports = False

    def __init__(self, device: Optional[torch.device] = None):
        super().__init__(device)
        from .cuda_vmm import CudaVmmBackend
        self._vmm = CudaVmmBackend(self.device)
        self.granularity = self._vmm.granularity
        self._twins = {}

    def allocate(self, nbytes: int) -> LocalShard:
        return CudaIpcLocal(nbytes, self.device.index)

    def private(self, nbytes: int) -> LocalShard:
        return self._vmm.private(nbytes)

    def compose(self, nbytes: int, pieces):
        mapped = []
        for offset, piece in pieces:
            if isinstance(piece, CudaIpcLocal):
                if id(piece) not in self._twins:  # one twin per piece, shared by the views of every slot
                    twin = self._vmm.private(piece.handle.nbytes)
                    twin.tensor.copy_(piece.tensor)
                    self._twins[id(piece)] = (piece, twin)
                piece = self._twins[id(piece)][1]
            mapped.append((offset, piece))
        return self._vmm.compose(nbytes, mapped)

    def close(self) -> None:
        for _, twin in self._twins.values():
            twin.close()
        self._twins = {}

    def open(self, handle: SharedHandle) -> PeerShard:
        return CudaIpcPeer(handle, self.device.index)
