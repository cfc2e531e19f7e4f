"""What this machine offers, read without initialising CUDA (the launcher starts no CUDA context and imports no
torch): its available host memory, and its visible GPUs as nvidia-smi reports them."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import List, Optional, Sequence


def host_available_bytes() -> Optional[int]:
    """MemAvailable of this host (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _visible_gpus(field: str) -> Optional[List[str]]:
    """One nvidia-smi query field for each GPU this process may use (CUDA_VISIBLE_DEVICES applied), or None where
    nvidia-smi is absent or shows none. The launcher initialises no CUDA, so it asks nvidia-smi."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, f"--query-gpu={field}", "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [line.strip() for line in out.splitlines() if line.strip()]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip():
        keep = [int(i) for i in visible.split(",") if i.strip().isdigit() and int(i) < len(rows)]
        rows = [rows[i] for i in keep] if keep else rows
    return rows or None


def gpu_memory_bytes() -> Optional[Sequence[int]]:
    """Each visible GPU's total memory, or None."""
    rows = _visible_gpus("memory.total")
    try:
        return [int(float(x)) * (1 << 20) for x in rows] if rows else None
    except ValueError:
        return None


def gpu_names() -> Optional[Sequence[str]]:
    """Each visible GPU's name (e.g. "NVIDIA H200"), or None."""
    return _visible_gpus("name")
