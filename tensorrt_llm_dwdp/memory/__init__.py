"""Shared expert memory: one handle type, several backends (host shm, CUDA IPC, CUDA VMM), composite views."""

from .base import Composite, LocalShard, MemoryBackend, PeerShard, SharedHandle, SharedMemoryError, get_backend, hostname

__all__ = ["Composite", "LocalShard", "MemoryBackend", "PeerShard", "SharedHandle", "SharedMemoryError", "get_backend", "hostname"]
