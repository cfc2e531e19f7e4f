"""Build script: pure Python everywhere, plus the C++ core where CUDA is.

libdwdp_core.so (kernels, copy plans, the DWDP context registry; CUDA runtime only, no torch C++ ABI) is
linked by both the `_C` extension and, where TensorRT headers are found, the TensorRT plugin library
libdwdp_trt_plugin.so; all three sit in the package folder (rpath $ORIGIN). Set DWDP_BUILD_EXT=0 to skip it, or
DWDP_BUILD_EXT=1 to make a missing toolkit an error instead of a skip.

The CUTLASS grouped GEMMs take minutes each to compile and run only on Hopper or Blackwell: by default they are
built only where such a GPU is visible (nvidia-smi), and with DWDP_GPU_KERNELS=1 anywhere (an image built on a
machine without the GPU it will run on); DWDP_GPU_KERNELS=0 leaves them out. Without them the library still
links and loads (the entry points report cudaErrorNotSupported). The build ends with one line saying what it built.
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


def visible_gpu_arch():
    """The highest compute capability among the visible GPUs (e.g. 9.0), or None where nvidia-smi shows none."""
    import subprocess
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=30).stdout
        caps = [float(x) for x in out.split()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return max(caps) if caps else None


def gpu_kernels_wanted():
    """(build the CUTLASS kernels?, why), from DWDP_GPU_KERNELS and the visible GPUs."""
    want = os.environ.get("DWDP_GPU_KERNELS", "auto").lower()
    if want in ("1", "true", "yes"):
        return True, "DWDP_GPU_KERNELS=1"
    if want in ("0", "false", "no"):
        return False, "DWDP_GPU_KERNELS=0"
    arch = visible_gpu_arch()
    if arch is None:
        return False, "no GPU visible here (DWDP_GPU_KERNELS=1 builds them anyway)"
    if arch < 9.0:
        return False, f"the visible GPU is sm_{arch * 10:.0f}; the kernels need Hopper (sm_90) or newer"
    return True, f"a sm_{arch * 10:.0f} GPU is visible"


def cuda_archs(nvcc):
    """-gencode flags: Hopper (sm_90a) always, Blackwell (sm_100a) where this nvcc knows it."""
    archs = os.environ.get("DWDP_CUDA_ARCHS")
    if archs is None:
        import subprocess
        listed = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True).stdout
        archs = "90a" + (";100a" if "compute_100" in listed else "")
    return [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs.split(";") if a]


def find_tensorrt_include():
    """Folder holding NvInferRuntime.h: TENSORRT_ROOT, then the ignored .trt/include, then the NGC image's paths."""
    candidates = []
    if os.environ.get("TENSORRT_ROOT"):
        candidates.append(Path(os.environ["TENSORRT_ROOT"]) / "include")
    candidates += [ROOT / ".trt" / "include", Path("/usr/include/x86_64-linux-gnu"), Path("/usr/include/aarch64-linux-gnu"),
                   Path("/usr/local/tensorrt/include")]
    return next((d for d in candidates if (d / "NvInferRuntime.h").exists()), None)


class BuildExtWithCuda(build_ext):
    """Builds libdwdp_core.so (kernels, copy plans, DWDP context registry) next to the package, then the `_C`
    extension and, where TensorRT headers are found, the plugin library, both linked to it (rpath $ORIGIN)."""

    def compile_objects(self, ext, sources, objdir, nvcc):
        import subprocess
        from concurrent.futures import ThreadPoolExecutor
        defines = [f"-D{k}" if v is None else f"-D{k}={v}" for k, v in ext.define_macros]
        includes = [f"-I{d}" for d in ext.include_dirs]
        # NOTE: an object newer than its source and every header is kept: the CUTLASS kernels take minutes.
        headers = [p.stat().st_mtime for p in (ROOT / "cpp").rglob("*.h*")]
        newest_header = max(headers) if headers else 0.0
        archs, cmds, objs = cuda_archs(nvcc), [], []
        for src in sources:
            obj = objdir / (Path(src).stem + ".o")
            objs.append(str(obj))
            if obj.exists() and obj.stat().st_mtime > max(Path(src).stat().st_mtime, newest_header):
                continue
            if src.endswith(".cu"):
                src_archs = [a for a in archs if a.endswith("sm_90a")] if src.endswith("_sm90.cu") else archs
                cmds.append([nvcc, "-std=c++17", "-O3", "-Xcompiler", "-fPIC", "--expt-relaxed-constexpr",
                             *src_archs, *defines, *includes, "-c", src, "-o", str(obj)])
            else:
                cmds.append(["g++", "-std=c++17", "-O2", "-fPIC", "-Wno-deprecated-declarations", *defines, *includes,
                             "-c", src, "-o", str(obj)])
        # NOTE: the CUTLASS kernels take minutes each; compile side by side, saying which is running and which is
        # done, so a long build is not a silent one (pip shows it with -v).
        import time
        jobs = int(os.environ.get("DWDP_BUILD_JOBS", os.cpu_count() or 1))
        t0 = time.monotonic()

        def compile_one(numbered):
            i, cmd = numbered
            name = Path(cmd[cmd.index("-c") + 1]).name
            print(f"[{i}/{len(cmds)}] {cmd[0].rsplit('/', 1)[-1]} {name} ...", flush=True)
            print(" ".join(cmd), flush=True)
            subprocess.check_call(cmd)
            print(f"[{i}/{len(cmds)}] {name} done ({time.monotonic() - t0:.0f} s)", flush=True)

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            list(pool.map(compile_one, enumerate(cmds, 1)))
        return objs

    def link_shared(self, objs, out, libdirs, libs):
        import subprocess
        cmd = ["g++", "-shared", "-o", str(out), *objs, *[f"-L{d}" for d in libdirs], *[f"-l{x}" for x in libs],
               "-Wl,-rpath,$ORIGIN", *[f"-Wl,-rpath,{d}" for d in libdirs if not str(d).startswith(str(ROOT))]]
        print(" ".join(cmd))
        subprocess.check_call(cmd)

    def build_extension(self, ext):
        nvcc = str(Path(ext.cuda_home) / "bin" / "nvcc")
        pkg_dir = Path(self.get_ext_fullpath(ext.name)).parent
        pkg_dir.mkdir(parents=True, exist_ok=True)
        objdir = Path(self.build_temp) / "dwdp_core"
        objdir.mkdir(parents=True, exist_ok=True)
        core_objs = self.compile_objects(ext, ext.core_sources, objdir, nvcc)
        self.link_shared(core_objs, pkg_dir / "libdwdp_core.so", [ext.cuda_lib], ["cudart"])
        ext.library_dirs = [str(pkg_dir), *ext.library_dirs]
        super().build_extension(ext)
        plugin = self.build_plugin(ext, nvcc, pkg_dir)
        print(f"tensorrt_llm_dwdp: built the C++ core and extension; CUTLASS grouped GEMMs: {ext.kernels_note}; "
              f"TensorRT plugin: {plugin}", file=sys.stderr, flush=True)

    def copy_extensions_to_source(self):
        """In-place and editable builds: setuptools copies only `_C` back to the package; its libraries too."""
        super().copy_extensions_to_source()
        for lib in (Path(self.build_lib) / "tensorrt_llm_dwdp").glob("libdwdp_*.so"):
            shutil.copy2(lib, ROOT / "tensorrt_llm_dwdp" / lib.name)

    def build_plugin(self, ext, nvcc, pkg_dir):
        if ext.trt_include is None:
            return ("not built (no TensorRT headers in TENSORRT_ROOT, .trt/include, /usr/include/x86_64-linux-gnu, "
                    "/usr/local/tensorrt/include)")
        ext.include_dirs = [*ext.include_dirs, str(ext.trt_include), str(ROOT / "cpp" / "plugin")]
        plug_dir = Path(self.build_temp) / "dwdp_plugin"
        plug_dir.mkdir(parents=True, exist_ok=True)
        plug_objs = self.compile_objects(ext, sorted(str(p.relative_to(ROOT)) for p in (ROOT / "cpp" / "plugin").glob("*.cpp")),
                                         plug_dir, nvcc)
        self.link_shared(plug_objs, pkg_dir / "libdwdp_trt_plugin.so", [pkg_dir, ext.cuda_lib], ["dwdp_core", "cudart"])
        return f"built against {ext.trt_include}"


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
    kernels, why = gpu_kernels_wanted()
    if kernels and not cutlass_includes:
        kernels, why = False, "no CUTLASS headers (pip install nvidia-cutlass)"
    if not kernels:
        cutlass_includes = []

    core = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "cpp" / "src").glob("*.cpp"))
    # NOTE: without the kernels, the *_sm90.cu files compile to nothing; leave them out rather than run nvcc on them
    core += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "cpp" / "src").glob("*.cu")
                   if kernels or not p.name.endswith("_sm90.cu"))
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "cpp" / "bindings").glob("*.cpp"))
    ext = Pybind11Extension(
        "tensorrt_llm_dwdp._C",
        sources,
        include_dirs=[str(ROOT / "cpp" / "include"), str(home / "include"), *cutlass_includes],
        define_macros=[("DWDP_WITH_CUTLASS", None)] if cutlass_includes else [],
        library_dirs=[str(libdir)],
        runtime_library_dirs=["$ORIGIN", str(libdir)],
        libraries=["dwdp_core", "cudart"],
        cxx_std=17,
        extra_compile_args=["-O2"],
    )
    ext.core_sources, ext.cuda_lib = core, str(libdir)
    ext.kernels_note = ("built (" + why + ")") if kernels else ("not built: " + why)
    ext.trt_include = find_tensorrt_include()
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
