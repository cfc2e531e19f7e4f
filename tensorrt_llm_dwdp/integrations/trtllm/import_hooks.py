"""Post-import hooks: call a function once a module is imported, before anyone uses it.

The adapter patches TensorRT-LLM's modules as they are imported (it never imports TensorRT-LLM itself), so a
deployment that asked for DWDP gets it before any model is built. A meta-path finder wraps the real loader of
each module someone waits for; the callbacks run right after the module's own code.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import threading
from typing import Callable, Dict, List

_lock = threading.RLock()
_pending: Dict[str, List[Callable]] = {}
_busy = set()


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
