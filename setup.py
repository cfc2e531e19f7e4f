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
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

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


def find_cutlass_includes():
    """CUTLASS header folders from PyPI's nvidia-cutlass (`cutlass_library`), or [] where it is absent."""
    try:
        import cutlass_library
    except ImportError:
        return []
    src = Path(cutlass_library.__file__).resolve().parent / "source"
    dirs = [src / "include", src / "tools" / "util" / "include"]
    return [str(d) for d in dirs] if (dirs[0] / "cutlass" / "cutlass.h").exists() else []


def cuda_archs(nvcc):
    """-gencode flags: Hopper (sm_90a) always, Blackwell (sm_100a) where this nvcc knows it."""
    archs = os.environ.get("DWDP_CUDA_ARCHS")
    if archs is None:
        import subprocess
        listed = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True).stdout
        archs = "90a" + (";100a" if "compute_100" in listed else "")
    return [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs.split(";") if a]


class BuildExtWithCuda(build_ext):
    """Compiles the .cu sources of an extension with nvcc, then links them with the C++ ones."""

    def build_extension(self, ext):
        cu = [s for s in ext.sources if s.endswith(".cu")]
        if cu:
            import subprocess
            nvcc = str(Path(ext.cuda_home) / "bin" / "nvcc")
            objdir = Path(self.build_temp) / "cuda"
            objdir.mkdir(parents=True, exist_ok=True)
            ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
            defines = [f"-D{k}" if v is None else f"-D{k}={v}" for k, v in ext.define_macros]
            archs = cuda_archs(nvcc)
            cmds = []
            for src in cu:
                obj = objdir / (Path(src).stem + ".o")
                src_archs = archs
                if src.endswith("_sm90.cu"):  # NOTE: Hopper-only kernels (wgmma, TMA): sm_90a alone
                    src_archs = [a for a in archs if a.endswith("sm_90a")]
                cmds.append([nvcc, "-std=c++17", "-O3", "-Xcompiler", "-fPIC", "--expt-relaxed-constexpr",
                             *src_archs, *defines, *[f"-I{d}" for d in ext.include_dirs], "-c", src, "-o", str(obj)])
                ext.extra_objects.append(str(obj))
            # NOTE: the CUTLASS kernels take about a minute each; compile them side by side, saying which is
            # running and which is done, so a long build is not a silent one (pip shows it with -v).
            import time
            from concurrent.futures import ThreadPoolExecutor
            jobs = int(os.environ.get("DWDP_BUILD_JOBS", os.cpu_count() or 1))
            t0 = time.monotonic()

            def compile_one(numbered):
                i, cmd = numbered
                name = Path(cmd[cmd.index("-c") + 1]).name
                print(f"[{i}/{len(cmds)}] nvcc {name} ...", flush=True)
                print(" ".join(cmd), flush=True)
                subprocess.check_call(cmd)
                print(f"[{i}/{len(cmds)}] nvcc {name} done ({time.monotonic() - t0:.0f} s)", flush=True)

            with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
                list(pool.map(compile_one, enumerate(cmds, 1)))
        super().build_extension(ext)


def extensions():
    want = os.environ.get("DWDP_BUILD_EXT", "auto").lower()
    if want in ("0", "false", "no"):
        return []
    home = find_cuda_home()
    libdir = cuda_lib_dir(home) if home else None
    if home is None or libdir is None or not (home / "bin" / "nvcc").exists():
        msg = "tensorrt_llm_dwdp: no CUDA toolkit with nvcc found (set CUDA_HOME); installing the pure-Python package only"
        if want in ("1", "true", "yes"):
            sys.exit(msg.replace("installing the pure-Python package only", "DWDP_BUILD_EXT=1 requires it"))
        print(msg, file=sys.stderr)
        return []
    from pybind11.setup_helpers import Pybind11Extension

    cutlass_includes = find_cutlass_includes()

    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "cpp" / "src").glob("*.cpp"))
    sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "cpp" / "src").glob("*.cu"))
    sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "cpp" / "bindings").glob("*.cpp"))
    ext = Pybind11Extension(
        "tensorrt_llm_dwdp._C",
        sources,
        include_dirs=[str(ROOT / "cpp" / "include"), str(home / "include"), *cutlass_includes],
        define_macros=[("DWDP_WITH_CUTLASS", None)] if cutlass_includes else [],
        library_dirs=[str(libdir)],
        runtime_library_dirs=[str(libdir)],
        libraries=["cudart"],
        cxx_std=17,
        extra_compile_args=["-O2"],
    )
    ext.cuda_home = str(home)
    return [ext]


# Activation hook for TensorRT-LLM deployments: a .pth at the root of site-packages runs at every interpreter
# start and does nothing unless TRTLLM_DWDP or TRTLLM_DWDP_OPTIONS is set (integrations/trtllm/activate.py).
PTH = Path("tensorrt_llm_dwdp") / "integrations" / "trtllm" / "tensorrt_llm_dwdp_trtllm.pth"


class BuildPyWithPth(build_py):
    """Also puts the .pth at the wheel root; an editable wheel is assembled in install_lib instead."""

    def run(self):
        super().run()
        root = self.distribution.get_command_obj("install").install_lib if self.editable_mode else self.build_lib
        if root and (ROOT / PTH).exists():
            self.copy_file(str(ROOT / PTH), os.path.join(root, PTH.name), preserve_mode=False)


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExtWithCuda, "build_py": BuildPyWithPth})
