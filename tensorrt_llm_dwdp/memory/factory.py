"""The memory backend factory: the one place that knows every backend (each backend imports only `base`)."""

from __future__ import annotations

from typing import Optional

import torch

from ..config import MEMORY_BACKENDS, BackendKind, DwdpConfigError
from .base import MemoryBackend


def check_backend_available(kind: str) -> None:
    """Raise DwdpConfigError when `kind` names a CUDA backend and no GPU is visible (asks the driver
    whether a device exists; allocates nothing)."""
    if kind not in MEMORY_BACKENDS:
        raise DwdpConfigError("memory_backend", kind, "unknown memory backend", f"use one of {', '.join(MEMORY_BACKENDS)}")
    if BackendKind(kind).needs_cuda and not torch.cuda.is_available():
        raise DwdpConfigError("memory_backend", kind, "needs a CUDA GPU and none is visible",
                              "use memory_backend cpu_shm (or auto) on a CPU machine")


def get_backend(kind: str = "auto", device: Optional[torch.device] = None) -> MemoryBackend:
    """'auto' picks cuda_vmm for a CUDA device (or when one is present), cpu_shm otherwise: VMM memory
    composes in place, legacy IPC memory needs a second copy of the shard for the composite views.

    cuda_ipc: legacy IPC handles. cuda_vmm: cuMemCreate + POSIX file descriptors (one node).
    cuda_fabric: cuMemCreate + fabric handles (multi-node NVLink domains)."""
    check_backend_available(kind)
    kind = BackendKind(kind)
    if kind is BackendKind.AUTO:
        gpu = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
        kind = BackendKind.CUDA_VMM if gpu else BackendKind.CPU_SHM
    if kind is BackendKind.CPU_SHM:
        from .cpu_shm import CpuShmBackend
        return CpuShmBackend()
    if kind is BackendKind.CUDA_IPC:
        from .cuda_ipc import CudaIpcBackend
        return CudaIpcBackend(device)
    from .cuda_vmm import CudaVmmBackend
    return CudaVmmBackend(device, fabric=kind is BackendKind.CUDA_FABRIC)
