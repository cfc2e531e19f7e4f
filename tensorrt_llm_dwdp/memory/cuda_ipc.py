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

from ..config import BackendKind
from .base import LocalShard, PeerShard, SharedHandle, SharedMemoryError, hostname
from .cuda_common import CudaBackend, as_cuda_tensor, check, cudart

IPC_HANDLE_BYTES = 64


def handle_to_bytes(handle) -> bytes:
    return ctypes.string_at(handle.getPtr(), IPC_HANDLE_BYTES)


def handle_from_bytes(payload: bytes):
    if len(payload) != IPC_HANDLE_BYTES:
        raise SharedMemoryError(f"CUDA IPC handle must be {IPC_HANDLE_BYTES} bytes, got {len(payload)}")
    h = cudart().cudaIpcMemHandle_t()
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
        rt = cudart()
        check(rt.cudaSetDevice(device), "cudaSetDevice")
        self.ptr = check(rt.cudaMalloc(nbytes), f"cudaMalloc({nbytes})")
        self.device = device
        handle = check(rt.cudaIpcGetMemHandle(self.ptr), "cudaIpcGetMemHandle")
        self.handle = SharedHandle(BackendKind.CUDA_IPC.value, nbytes, handle_to_bytes(handle), hostname(), device,
                                   os.getpid())
        self.tensor = as_cuda_tensor(int(self.ptr), nbytes, device, self)

    @staticmethod
    def _release(ptr) -> None:
        check(cudart().cudaFree(ptr), "cudaFree")


class CudaIpcPeer(_Mapping, PeerShard):
    def __init__(self, handle: SharedHandle, device: int):
        rt = cudart()
        check(rt.cudaSetDevice(device), "cudaSetDevice")
        self.ptr = check(rt.cudaIpcOpenMemHandle(handle_from_bytes(handle.payload),
                                                  rt.cudaIpcMemLazyEnablePeerAccess),
                          f"cudaIpcOpenMemHandle (peer pid {handle.pid}, device {handle.device})")
        self.handle, self.device = handle, device
        self.tensor = as_cuda_tensor(int(self.ptr), handle.nbytes, device, self)

    @staticmethod
    def _release(ptr) -> None:
        check(cudart().cudaIpcCloseMemHandle(ptr), "cudaIpcCloseMemHandle")


class CudaIpcBackend(CudaBackend):
    """Legacy IPC exports; composite views need VMM memory, so each exported piece gets a private VMM twin
    (a second copy of the shard, reported at setup): cuda_vmm composes in place and is the default."""

    kind = BackendKind.CUDA_IPC
    composes_exports = False

    def __init__(self, device: Optional[torch.device] = None):
        super().__init__(device)
        from .cuda_vmm import CudaVmmBackend  # NOTE: composing goes through VMM; cuda_vmm imports nothing of this file
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
