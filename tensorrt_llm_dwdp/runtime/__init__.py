"""Reference runtime: a compact DeepSeek-architecture decoder and `apply_dwdp`.

Importing the package imports no torch: the names below load their modules on first use (PEP 562), so the
`bench` launcher checks its options and starts mpirun without paying for torch.
"""

from ..lazy import lazy_exports

__all__ = ["PRESETS", "Decoder", "ModelConfig", "apply_dwdp", "preset"]

__getattr__, __dir__ = lazy_exports(__name__, {"apply_dwdp": ".apply", "PRESETS": ".model_config",
                                               "ModelConfig": ".model_config", "preset": ".model_config",
                                               "Decoder": ".model"}, globals())
