"""What every CUDA memory backend shares: the runtime bindings, error checks, tensors over raw device memory,
and the device-memory backend base (device, free memory, peer reachability). Also used outside `memory`
(the copy engine's pulls, doctor), so these names are public."""

from __future__ import annotations

from typing import Optional

import torch

from ..config import BackendKind
from .base import MemoryBackend, SharedHandle, SharedMemoryError


def cudart():
    try:
        from cuda.bindings import runtime
    except ImportError:  # cuda-python < 12.6 names the module cuda.cudart
        from cuda import cudart as runtime
    return runtime


def check(result, what: str):
    err, *rest = result if isinstance(result, tuple) else (result,)
    rt = cudart()
    if err != rt.cudaError_t.cudaSuccess:
        _, name = rt.cudaGetErrorName(err)
        raise SharedMemoryError(f"{what} failed: {name.decode() if isinstance(name, bytes) else name}")
    return rest[0] if len(rest) == 1 else tuple(rest)


def as_cuda_tensor(ptr: int, nbytes: int, device: int, owner) -> torch.Tensor:
    """A uint8 tensor over raw device memory; `owner` is kept alive by the tensor."""

    class _Span:
        __cuda_array_interface__ = {"shape": (nbytes,), "typestr": "|u1", "data": (ptr, False),
                                    "version": 3, "strides": None}

    span = _Span()
    span.owner = owner
    with torch.cuda.device(device):
        return torch.as_tensor(span, device=f"cuda:{device}")


class CudaBackend(MemoryBackend):
    """What every device-memory backend shares: the device, free memory, peer reachability."""

    kind = "cuda"

    def __init__(self, device: Optional[torch.device] = None):
        if not torch.cuda.is_available():
            raise SharedMemoryError(f"memory_backend='{self.kind}' needs a CUDA GPU; none is visible "
                                    f"(use memory_backend='{BackendKind.CPU_SHM}' for CPU ranks)")
        index = torch.cuda.current_device() if device is None else torch.device(device).index
        self.device = torch.device("cuda", torch.cuda.current_device() if index is None else index)

    def free_bytes(self) -> int:
        free, _ = torch.cuda.mem_get_info(self.device)
        return free

    def check_reachable(self, handle: SharedHandle, peer_rank: int) -> None:
        super().check_reachable(handle, peer_rank)
        if handle.device != self.device.index:
            ok = check(cudart().cudaDeviceCanAccessPeer(self.device.index, handle.device),
                        "cudaDeviceCanAccessPeer")
            if not ok:
                raise SharedMemoryError(
                    f"GPU {self.device.index} cannot access GPU {handle.device} of peer rank {peer_rank} "
                    "(no NVLink/P2P path): a DWDP group must lie within one NVLink domain; "
                    "choose group_size and the rank-to-GPU mapping so that a group's GPUs are peers")
