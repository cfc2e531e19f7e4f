"""Activation: install the TensorRT-LLM adapter in every process that asks for DWDP.

The installed `tensorrt_llm_dwdp_trtllm.pth` calls `startup()` at interpreter start-up, and only
when TRTLLM_DWDP or TRTLLM_DWDP_OPTIONS is set. `startup` parses the options and registers
post-import hooks, so the adapter patches TensorRT-LLM's modules as they are imported, before any
model is built; it never imports TensorRT-LLM itself and never raises: a problem is one line on
stderr. Options that are wrong make the later `import tensorrt_llm` fail with that sentence, so a
deployment that asked for DWDP never starts silently without it.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import threading
from typing import Callable, Dict, List, Mapping, Optional

from .options import ENV_FILE, ENV_INLINE

_lock = threading.RLock()
_pending: Dict[str, List[Callable]] = {}
_busy = set()
_started = False


class _Loader(importlib.abc.Loader):
    """Runs the real loader, then the callbacks registered for the module."""

    def __init__(self, inner, name: str):
        self.inner, self.name = inner, name

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        # Hand the module its real loader first: resource readers and reloads look there.
        module.__loader__ = self.inner
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self.inner
        self.inner.exec_module(module)
        with _lock:
            callbacks = _pending.pop(self.name, [])
        for cb in callbacks:
            cb(module)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        with _lock:
            if fullname not in _pending or fullname in _busy:
                return None
            _busy.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)  # the other finders' answer
        finally:
            with _lock:
                _busy.discard(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _Loader(spec.loader, fullname)
        return spec


_FINDER = _PostImportFinder()


def when_imported(name: str, callback: Callable) -> None:
    """Call callback(module) once module `name` is imported (now, if it already is)."""
    with _lock:
        module = sys.modules.get(name)
        if module is None:
            _pending.setdefault(name, []).append(callback)
            if _FINDER not in sys.meta_path:
                sys.meta_path.insert(0, _FINDER)
            return
    callback(module)


def clear_hooks() -> None:
    """Forget every pending callback and remove the finder."""
    with _lock:
        _pending.clear()
        if _FINDER in sys.meta_path:
            sys.meta_path.remove(_FINDER)


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
    from . import engine_flow, engine_runtime

    when_imported("tensorrt_llm.commands.build", engine_flow.patch_build_command)
    for name in ("tensorrt_llm.runtime.model_runner", "tensorrt_llm.runtime.model_runner_cpp"):
        when_imported(name, engine_runtime.patch_runtime_module)
    when_imported("tensorrt_llm.executor.base_worker", engine_runtime.patch_worker_module)


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
    return any(os.path.basename(a) == "trtllm-dwdp" or a == "tensorrt_llm_dwdp.cli" for a in list(argv)[:3])
