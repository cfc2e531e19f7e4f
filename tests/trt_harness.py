"""Builds and loads tests/cpp/plugin_harness.cpp, which plays TensorRT's part against the DwdpMoe plugin.

Needs TensorRT headers (TENSORRT_ROOT, .trt/include, or the NGC image's paths) and the plugin library built by
setup.py; `missing()` says which is absent, so callers skip with that reason.
"""

import ctypes
import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "tensorrt_llm_dwdp" / "libdwdp_trt_plugin.so"
FIELDS = 8  # layer_index, num_experts, hidden_size, intermediate_size, top_k, routing, dtype, context_id


def trt_include() -> Optional[Path]:
    dirs = [Path(os.environ["TENSORRT_ROOT"]) / "include"] if os.environ.get("TENSORRT_ROOT") else []
    dirs += [ROOT / ".trt" / "include", Path("/usr/include/x86_64-linux-gnu"), Path("/usr/include/aarch64-linux-gnu"),
             Path("/usr/local/tensorrt/include")]
    return next((d for d in dirs if (d / "NvInferRuntime.h").exists()), None)


def cuda_home() -> Path:
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env) and (Path(os.environ[env]) / "include" / "cuda_runtime_api.h").exists():
            return Path(os.environ[env])
    nvcc = shutil.which("nvcc")
    home = Path(nvcc).resolve().parent.parent if nvcc else None
    return home if home and (home / "include" / "cuda_runtime_api.h").exists() else Path("/usr/local/cuda")


def missing() -> Optional[str]:
    """Why the harness cannot run here, or None."""
    if trt_include() is None:
        return "no TensorRT headers (set TENSORRT_ROOT or put them in .trt/include)"
    if not PLUGIN.exists():
        return "libdwdp_trt_plugin.so is not built (setup.py builds it where TensorRT headers are found)"
    return None


def build(out: Path) -> Path:
    """Compile the harness into `out` (a .so path); returns it."""
    cuda = cuda_home()
    lib = next((d for d in (cuda / "lib64", cuda / "targets/x86_64-linux/lib") if (d / "libcudart.so").exists()), None)
    subprocess.run(["g++", "-std=c++17", "-shared", "-fPIC", "-Wno-deprecated-declarations", f"-I{trt_include()}",
                    f"-I{cuda / 'include'}", str(ROOT / "tests" / "cpp" / "plugin_harness.cpp"), "-o", str(out),
                    f"-L{lib}", "-lcudart", "-ldl", f"-Wl,-rpath,{lib}"], check=True)
    return out


def load(path: Path):
    h = ctypes.CDLL(str(path))
    h.harness_error.restype = ctypes.c_char_p
    h.harness_workspace.restype = ctypes.c_int64
    return h


def fields(values):
    return (ctypes.c_int32 * FIELDS)(*values)
