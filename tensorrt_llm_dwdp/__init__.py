"""Distributed Weight Data Parallelism (DWDP) for Mixture-of-Experts inference.

Importing this package does no device work; see `DwdpHooks.setup`.
"""

__version__ = "0.1.0"

from .config import DwdpConfig, DwdpConfigError  # noqa: E402


def __getattr__(name):
    # NOTE: the hooks pull in torch; a command that only parses options, or the simulator, need not pay for it.
    if name in ("DwdpHooks", "MoeShape"):
        from . import hooks
        return getattr(hooks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DwdpConfig", "DwdpConfigError", "DwdpHooks", "MoeShape", "__version__"]
