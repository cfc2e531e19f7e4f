"""The one prefix of every line the TensorRT-LLM adapter writes (stderr, flushed: ranks' lines interleave)."""

import sys


def log(msg: str) -> None:
    print(f"[tensorrt_llm_dwdp] {msg}", file=sys.stderr, flush=True)
