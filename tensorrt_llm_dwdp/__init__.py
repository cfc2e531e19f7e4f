"""Distributed Weight Data Parallelism (DWDP) for Mixture-of-Experts inference.

Importing this package does no device work and imports no torch: the names below load their
modules on first use (PEP 562), so `tensorrt_llm_dwdp.sim` and `tensorrt_llm_dwdp.presets` stay
torch-free. See `DwdpHooks.setup`.
"""

from importlib import import_module

__version__ = "0.1.0"

# public name -> module that defines it, imported on first access
_LAZY = {"DwdpConfig": ".config", "DwdpConfigError": ".config", "DwdpHooks": ".hooks", "MoeShape": ".hooks"}

__all__ = ["DwdpConfig", "DwdpConfigError", "DwdpHooks", "MoeShape", "__version__"]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
