"""`trtllm-dwdp bench kernels`: the GPU data path of the product, measured side by side in one run.

Runs on `--ranks` processes (mpirun; they share the GPU when there is one): every rank sets up real DWDP
hooks (CUDA VMM shards, composite views, copy plans on the copy engine); rank 0 measures, the others hold
the shards it pulls from.

  gemm:    the expert GEMMs on the hooks' composite [E, ...] tensors vs the same experts in an ordinary
           allocation vs dense cuBLAS GEMMs of equal FLOPs; the whole expert MLP (permute, GEMMs, SwiGLU,
           combine) on the selected kernel and on our CUTLASS BF16 kernel; BF16 and FP8 block-scaled;
           balanced and skewed routing; 2K-32K tokens per rank;
  overlap: a layer's expert MLP while the next layer's pull runs (the real prefetch protocol) vs the same
           MLP with no pull in flight, and the pull's rate alone;
  hooks:   host time per MoE layer of the hook calls (layer_weights + layer_done) and per step.
"""

from __future__ import annotations

import argparse
import json
from typing import List, Optional

from ...launch import run_ranks

SECTIONS = ("gemm", "overlap", "hooks")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="trtllm-dwdp bench kernels", description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="deepseek-v3,qwen3-30b-a3b", help="comma list of deepseek-v3, qwen3-30b-a3b")
    p.add_argument("--tokens", default="2048,8192,16384,32768", help="tokens per rank, comma list")
    p.add_argument("--dtypes", default="bfloat16,float8_e4m3fn", help="expert weight dtypes, comma list")
    p.add_argument("--routing", default="balanced,skewed",
                   help="comma list of balanced (uniform random), exact (equal rows per expert), skewed (hot experts)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    p.add_argument("--slice-mib", type=float, default=32.0, help="pull slice size (MiB) of the overlap section")
    p.add_argument("--ranks", type=int, default=2, help="processes (one measures, the others are its peers)")
    p.add_argument("--json", default=None, help="write every row here")
    args = p.parse_args(argv)
    from .setup import SHAPES
    for option, values, allowed in (("--shapes", args.shapes, SHAPES), ("--sections", args.sections, SECTIONS),
                                    ("--dtypes", args.dtypes, ("bfloat16", "float8_e4m3fn")),
                                    ("--routing", args.routing, ("balanced", "exact", "skewed"))):
        bad = [v for v in values.split(",") if v not in allowed]
        if bad:
            p.error(f"{option}: unknown {bad}; use a comma list of {', '.join(allowed)}")
    if args.ranks < 2:
        p.error(f"--ranks {args.ranks}: at least 2 (one measures, a peer holds the experts it pulls)")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    return run_ranks(args.ranks, ["-m", "tensorrt_llm_dwdp.bench.kernels.job", *(argv or [])])


def write_json(path: str, out: dict) -> None:
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
