"""Reference runtime: a compact DeepSeek-architecture decoder and `apply_dwdp`.

Importing the package imports no torch: the names below load their modules on first use (PEP 562), so the
`bench` launcher checks its options and starts mpirun without paying for torch.
"""

from importlib import import_module

# public name -> module that defines it, imported on first access
_LAZY = {"apply_dwdp": ".apply", "PRESETS": ".config", "ModelConfig": ".config", "preset": ".config",
         "Decoder": ".model"}

__all__ = ["PRESETS", "Decoder", "ModelConfig", "apply_dwdp", "preset"]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
