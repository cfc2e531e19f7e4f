"""Shared expert memory: one handle type, several backends (host shm, CUDA IPC)."""

from .base import LocalShard, MemoryBackend, PeerShard, SharedHandle, SharedMemoryError, get_backend, hostname

__all__ = ["LocalShard", "MemoryBackend", "PeerShard", "SharedHandle", "SharedMemoryError", "get_backend", "hostname"]
