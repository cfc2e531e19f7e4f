"""The memory backend factory: the one place that knows every backend (each backend imports only `base`)."""

from __future__ import annotations

from typing import Optional

import torch

from .base import MemoryBackend


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
