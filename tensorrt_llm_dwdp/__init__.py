"""Distributed Weight Data Parallelism (DWDP) for Mixture-of-Experts inference.

Importing this package does no device work and imports no torch: the names below load on first use.
"""

__version__ = "0.1.0"

_LAZY = {"DwdpConfig": ".config", "DwdpConfigError": ".config", "DwdpHooks": ".hooks", "MoeShape": ".hooks"}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(_LAZY[name], __name__), name)
