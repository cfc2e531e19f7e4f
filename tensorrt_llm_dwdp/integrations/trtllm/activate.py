"""Activation: install the TensorRT-LLM adapter in every process that asks for DWDP.

The installed `tensorrt_llm_dwdp_trtllm.pth` calls `startup()` at interpreter start-up, and only
when TRTLLM_DWDP or TRTLLM_DWDP_OPTIONS is set. `startup` parses the options and registers
post-import hooks, so the adapter patches TensorRT-LLM's modules as they are imported, before any
model is built; it never imports TensorRT-LLM itself and never raises: a problem is one line on
stderr. Options that are wrong make the later `import tensorrt_llm` fail with that sentence, so a
deployment that asked for DWDP never starts silently without it.
"""

from __future__ import annotations

import sys
from typing import Callable, Mapping, Optional

from .import_hooks import when_imported
from .options import ENV_FILE, ENV_INLINE

_started = False


def _raise_later(error: Exception, say: Optional[str] = None) -> Callable:
    """A post-import callback that fails the import with `error`, after one line on stderr (`say`)."""
    def fail(_module):
        if say:
            print(say, file=sys.stderr, flush=True)
        raise error
    return fail


def activate(environ: Optional[Mapping[str, str]] = None) -> bool:
    """Install the adapter if this process's environment asks for DWDP; True if it did."""
    from ...config import DwdpConfigError
    from .options import load_options

    try:
        options = load_options(environ)
    except DwdpConfigError as e:
        # Said where it matters, once: `import tensorrt_llm` fails with it. Every other Python process of the
        # shell (pip, a test runner) starts as if DWDP had not been asked for.
        when_imported("tensorrt_llm", _raise_later(e, f"tensorrt_llm_dwdp: DWDP options rejected: {e}"))
        return False
    if options is None or not options.enable:
        return False
    from .adapter import install
    install(options)
    install_engine_flow()
    return True


def install_engine_flow() -> None:
    """The TensorRT engine flow: trtllm-build gets --dwdp_group_size, and the engine runners (ModelRunner,
    ModelRunnerCpp, and the LLM API's workers behind LLM(backend="tensorrt") and trtllm-serve) set the DWDP context
    up before deserialising an engine built with it."""
    from ..trt_engine import build as engine_build, load as engine_load

    when_imported("tensorrt_llm.commands.build", engine_build.patch_build_command)
    for name in ("tensorrt_llm.runtime.model_runner", "tensorrt_llm.runtime.model_runner_cpp"):
        when_imported(name, engine_load.patch_runtime_module)
    when_imported("tensorrt_llm.executor.base_worker", engine_load.patch_worker_module)


def startup() -> None:
    """The .pth entry point: cheap when DWDP is not asked for, and never raises."""
    import os
    global _started
    if _started or (ENV_INLINE not in os.environ and ENV_FILE not in os.environ):
        return  # NOTE: site-packages may be on sys.path twice (lib and lib64), so the .pth can run twice
    _started = True
    if _own_cli(getattr(sys, "orig_argv", ())):
        return  # `trtllm-dwdp launch` checks the options and reports them in one line itself
    try:
        activate()
    except Exception as e:  # noqa: BLE001 - start-up must survive anything
        msg = f"TensorRT-LLM activation hook failed, DWDP is not installed: {type(e).__name__}: {e}"
        print(f"tensorrt_llm_dwdp: {msg}", file=sys.stderr, flush=True)
        when_imported("tensorrt_llm", _raise_later(RuntimeError(msg)))


def _own_cli(argv) -> bool:
    """Whether this interpreter runs the trtllm-dwdp command (which never imports TensorRT-LLM)."""
    import os
    modules = ("tensorrt_llm_dwdp", "tensorrt_llm_dwdp.commands.main")  # python -m ...
    return any(os.path.basename(a) == "trtllm-dwdp" or a in modules for a in list(argv)[:3])
