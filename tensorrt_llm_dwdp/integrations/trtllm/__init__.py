"""DWDP as a drop-in for TensorRT-LLM's PyTorch backend.

Enabled by a `dwdp:` section in the LLM API options file (`--extra_llm_api_options` /
`--config`) or the TRTLLM_DWDP environment variable; see `options`. In every process that sets
TRTLLM_DWDP or TRTLLM_DWDP_OPTIONS, the .pth hook (`activate`) installs the adapter when
`tensorrt_llm` is imported; `trtllm-dwdp launch -- <cmd>` sets that up for a launch command.
Importing this package does nothing else.
"""

from .options import ENV_FILE, ENV_INLINE, TrtllmDwdpOptions, load_options

__all__ = ["ENV_FILE", "ENV_INLINE", "TrtllmDwdpOptions", "load_options"]
