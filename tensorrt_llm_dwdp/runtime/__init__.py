"""Reference runtime: a compact DeepSeek-architecture decoder and `apply_dwdp`."""

from .apply import apply_dwdp
from .config import PRESETS, ModelConfig, preset
from .model import Decoder

__all__ = ["PRESETS", "Decoder", "ModelConfig", "apply_dwdp", "preset"]
