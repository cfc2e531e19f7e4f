"""Shared expert memory: one handle type, several backends (host shm, CUDA IPC, CUDA VMM), composite views."""

from .base import Composite, LocalShard, MemoryBackend, PeerShard, SharedHandle, SharedMemoryError, hostname
from .factory import check_backend_available, get_backend

__all__ = ["Composite", "LocalShard", "MemoryBackend", "PeerShard", "SharedHandle", "SharedMemoryError", "check_backend_available", "get_backend", "hostname"]
