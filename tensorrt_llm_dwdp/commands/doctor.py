"""`trtllm-dwdp doctor`: what this machine offers DWDP. Reports; never fails on a CPU-only machine."""

from __future__ import annotations

import platform
from typing import List, Tuple

from .. import __version__
from ..config import BackendKind


def _extension() -> str:
    try:
        from .. import _C
    except ImportError as e:
        return f"not built ({e}); pulls are issued through cuda.bindings"
    v = _C.cuda_runtime_version()
    # the CUTLASS grouped GEMMs are bound only where they were compiled (a GPU was visible, or asked for)
    kernels = "with" if hasattr(_C, "grouped_gemm_bf16") else "without"
    return f"built ({_C.__file__}), CUDA runtime {v // 1000}.{v % 1000 // 10}, {kernels} the Hopper grouped GEMMs"


def _cuda_bindings() -> str:
    try:
        from ..memory.cuda_common import cudart
        rt = cudart()
    except ImportError as e:
        return f"unavailable ({e})"
    err, ver = rt.cudaRuntimeGetVersion()
    return f"available (runtime {ver // 1000}.{ver % 1000 // 10})" if err == rt.cudaError_t.cudaSuccess else "available"


def _gpus() -> Tuple[List[str], List[str]]:
    import torch

    if not torch.cuda.is_available():
        return [], []
    n = torch.cuda.device_count()
    gpus = []
    for i in range(n):
        p = torch.cuda.get_device_properties(i)
        gpus.append(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs")
    rows = []
    if n > 1:
        rows.append("      " + " ".join(f"{j:>4}" for j in range(n)))
        for i in range(n):
            cells = ["   -" if i == j else ("  P2P" if torch.cuda.can_device_access_peer(i, j) else "   no")[-4:]
                     for j in range(n)]
            rows.append(f"  {i:>3} " + " ".join(cells))
        rows += _nvlink_lines(n)
    return gpus, rows


def _nvlink_lines(n: int) -> List[str]:
    try:
        import pynvml
    except ImportError:
        return ["  NVLink state: install nvidia-ml-py to read it"]
    try:
        pynvml.nvmlInit()
        out = []
        for i in range(n):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            up = 0
            for link in range(18):
                try:
                    up += pynvml.nvmlDeviceGetNvLinkState(h, link) == pynvml.NVML_FEATURE_ENABLED
                except pynvml.NVMLError:
                    break
            out.append(f"  cuda:{i} NVLink links up: {up}")
        pynvml.nvmlShutdown()
        return out
    except Exception as e:  # noqa: BLE001 - reported only
        return [f"  NVLink state unavailable ({e})"]


def report() -> List[str]:
    import torch

    from ..bootstrap import mpi_library_version
    from .mpirun import find_mpirun, mpirun_flavor

    lines = [f"tensorrt_llm_dwdp {__version__} (Python {platform.python_version()}, torch {torch.__version__}, "
             f"torch CUDA {torch.version.cuda or 'none'})",
             f"C++ extension: {_extension()}",
             f"cuda.bindings: {_cuda_bindings()}"]
    gpus, peer_rows = _gpus()
    backends = [BackendKind.CPU_SHM]
    if gpus and "available" in _cuda_bindings():
        from ..memory.cuda_vmm import fabric_supported
        backends += [BackendKind.CUDA_IPC, BackendKind.CUDA_VMM] + ([BackendKind.CUDA_FABRIC] if fabric_supported(0)
                                                                     else [])
    lines.append(f"memory backends: {', '.join(backends)}")
    from ..moe.deepgemm import describe
    lines.append(f"DeepGEMM expert kernels: {describe()}")
    lines.append(f"GPUs: {len(gpus) or 'none (CPU ranks only)'}")
    lines += [f"  {g}" for g in gpus]
    if peer_rows:
        lines.append("peer access (row can read column):")
        lines += peer_rows
    elif gpus:
        lines.append("peer access: one GPU; ranks sharing it use CUDA IPC on the same device")
    mpirun = find_mpirun()
    lines.append(f"MPI library: {mpi_library_version()}")
    lines.append(f"mpirun: {mpirun} ({mpirun_flavor(mpirun)})" if mpirun else "mpirun: not found")
    return lines


def main() -> int:
    print("\n".join(report()))
    return 0
