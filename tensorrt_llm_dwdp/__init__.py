"""Distributed Weight Data Parallelism (DWDP) for Mixture-of-Experts inference.

Importing this package does no device work and imports no torch: the names below load their
modules on first use (PEP 562), so `tensorrt_llm_dwdp.sim` and `tensorrt_llm_dwdp.workloads.presets` stay
torch-free. See `DwdpHooks.setup`.
"""

from .lazy import lazy_exports

__version__ = "0.1.0"

__all__ = ["DwdpConfig", "DwdpConfigError", "DwdpHooks", "MoeShape", "__version__"]

__getattr__, __dir__ = lazy_exports(__name__, {"DwdpConfig": ".config", "DwdpConfigError": ".config",
                                               "DwdpHooks": ".hooks", "MoeShape": ".shard"}, globals())
