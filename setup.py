"""Build script: pure Python everywhere, plus the `_C` extension from `cpp/` where CUDA is.

The extension links only against the CUDA runtime (no torch C++ ABI), so the same
sources can be reused by a TensorRT plugin. Set DWDP_BUILD_EXT=0 to skip it, or
DWDP_BUILD_EXT=1 to make a missing toolkit an error instead of a skip.
"""

import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def find_cuda_home():
    for env in ("CUDA_HOME", "CUDA_PATH"):
        path = os.environ.get(env)
        if path and (Path(path) / "include" / "cuda_runtime_api.h").exists():
            return Path(path)
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = Path(nvcc).resolve().parent.parent
        if (home / "include" / "cuda_runtime_api.h").exists():
            return home
    default = Path("/usr/local/cuda")
    if (default / "include" / "cuda_runtime_api.h").exists():
        return default
    return None


def cuda_lib_dir(home):
    for sub in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"):
        if (home / sub / "libcudart.so").exists():
            return home / sub
    return None


def extensions():
    want = os.environ.get("DWDP_BUILD_EXT", "auto").lower()
    if want in ("0", "false", "no"):
        return []
    home = find_cuda_home()
    libdir = cuda_lib_dir(home) if home else None
    if home is None or libdir is None:
        msg = "tensorrt_llm_dwdp: no CUDA toolkit found (set CUDA_HOME); installing the pure-Python package only"
        if want in ("1", "true", "yes"):
            sys.exit(msg.replace("installing the pure-Python package only", "DWDP_BUILD_EXT=1 requires it"))
        print(msg, file=sys.stderr)
        return []
    from pybind11.setup_helpers import Pybind11Extension

    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "cpp" / "src").glob("*.cpp"))
    sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "cpp" / "bindings").glob("*.cpp"))
    return [
        Pybind11Extension(
            "tensorrt_llm_dwdp._C",
            sources,
            include_dirs=[str(ROOT / "cpp" / "include"), str(home / "include")],
            library_dirs=[str(libdir)],
            runtime_library_dirs=[str(libdir)],
            libraries=["cudart"],
            cxx_std=17,
            extra_compile_args=["-O2"],
        )
    ]


setup(ext_modules=extensions())
