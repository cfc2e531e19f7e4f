"""Distributed Weight Data Parallelism (DWDP) for Mixture-of-Experts inference.

Importing this package does no device work; see `DwdpHooks.setup`.
"""

__version__ = "0.1.0"

from .config import DwdpConfig, DwdpConfigError  # noqa: E402
from .hooks import DwdpHooks, MoeShape  # noqa: E402

__all__ = ["DwdpConfig", "DwdpConfigError", "DwdpHooks", "MoeShape", "__version__"]
