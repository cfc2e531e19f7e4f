"""`trtllm-dwdp bench kernels`: the GPU data path of the product, measured side by side in one run.

Runs on `--ranks` processes (mpirun; they share the GPU when there is one): every rank sets up real DWDP
hooks (CUDA VMM shards, composite views, copy plans on the copy engine); rank 0 measures, the others hold
the shards it pulls from.

  gemm:    the expert GEMMs on the hooks' composite [E, ...] tensors vs the same experts in an ordinary
           allocation vs dense cuBLAS GEMMs of equal FLOPs; the whole expert MLP (permute, GEMMs, SwiGLU,
           combine) on the selected kernel, and every kernel of the dtype side by side (DeepGEMM, our CUTLASS
           kernels, torch._grouped_mm); BF16 and FP8 block-scaled; exact, balanced and skewed routing;
           2K-32K tokens per rank; each configuration's kernels timed in turns, each GEMM also alone;
  rows:    the same GEMMs with exact routing over all, a quarter and a sixteenth of the experts: the same FLOPs at
           4x and 16x the rows per expert, how a grouped GEMM's rate depends on them;
  overlap: a layer's expert MLP while the next layer's pull runs (the real prefetch protocol) vs the same
           MLP with no pull in flight, and the pull's rate alone;
  hooks:   host time per MoE layer of the hook calls (layer_weights + layer_done) and per step, through the
           native ring and through torch's Python CUDA calls (DWDP_NATIVE_RING=0), side by side.
"""

from __future__ import annotations

import json
from typing import List, Optional

from ...commands.mpirun import check_ranks, run_ranks
from ...commands.usage import Parser, UsageError, check_output_path, one_line_errors, open_output, positive
from ...config import WeightDtype

PROG = "trtllm-dwdp bench kernels"

SECTIONS = ("gemm", "rows", "overlap", "hooks")
MAX_TOKENS = 1 << 20  # per rank: beyond any serving engine's token budget


def build_parser() -> Parser:
    p = Parser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="deepseek-v3,qwen3-30b-a3b",
                   help="comma list of model presets (their expert shapes), e.g. deepseek-v3,qwen3-30b-a3b")
    p.add_argument("--tokens", default="2048,8192,16384,32768", help="tokens per rank, comma list")
    p.add_argument("--dtypes", default=f"{WeightDtype.BF16},{WeightDtype.FP8}", help="expert weight dtypes, comma list")
    p.add_argument("--routing", default="exact,balanced,skewed",
                   help="comma list of balanced (uniform random), exact (equal rows per expert), skewed (hot experts)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    p.add_argument("--slice-mib", type=float, default=32.0, help="pull slice size (MiB) of the overlap section")
    p.add_argument("--ranks", type=int, default=2, help="processes (one measures, the others are its peers)")
    p.add_argument("--json", default=None, help="write every row here")
    return p


def parse_args(argv: Optional[List[str]] = None):
    """Every option checked here, in the launching process (UsageError: one line naming the option)."""
    args = build_parser().parse_args(argv)
    from .setup import SHAPES
    for option, values, allowed in (("--shapes", args.shapes, SHAPES), ("--sections", args.sections, SECTIONS),
                                    ("--dtypes", args.dtypes, (WeightDtype.BF16.value, WeightDtype.FP8.value)),
                                    ("--routing", args.routing, ("balanced", "exact", "skewed"))):
        bad = [v for v in values.split(",") if v not in allowed]
        if bad:
            raise UsageError(f"{option} {values}: unknown {bad}. Fix: a comma list of {', '.join(allowed)}.")
    for t in args.tokens.split(","):
        try:
            positive("--tokens", float(t), "a comma list of token counts, e.g. 2048,8192")
        except ValueError:
            raise UsageError(f"--tokens {args.tokens}: {t!r} is not a token count. Fix: e.g. --tokens 2048,8192.") from None
        if float(t) > MAX_TOKENS:
            raise UsageError(f"--tokens {args.tokens}: {t} is more than {MAX_TOKENS} tokens per rank. "
                             f"Fix: e.g. --tokens 2048,8192,32768.")
    if not 1 / 1024 <= args.slice_mib <= 1024:
        raise UsageError(f"--slice-mib {args.slice_mib:g}: must be 1/1024 to 1024 MiB. Fix: e.g. --slice-mib 32.")
    if args.ranks < 2:
        raise UsageError(f"--ranks {args.ranks}: one rank measures and at least one peer holds the experts it pulls. "
                         "Fix: --ranks 2 or more.")
    check_ranks(args.ranks)
    check_output_path("--json", args.json)
    return args


def main(argv: Optional[List[str]] = None) -> int:
    return one_line_errors(PROG, _main, argv)


def _main(argv: Optional[List[str]]) -> int:
    parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        raise UsageError("no CUDA GPU is visible: bench kernels measures the GPU data path. "
                         "Fix: run it on a GPU machine (trtllm-dwdp sim models one you lack).")
    return run_ranks(parse_args(argv).ranks, ["-m", "tensorrt_llm_dwdp.bench.kernels.job", *(argv or [])], prog=PROG)


def write_json(path: str, out: dict) -> None:
    with open_output(path) as f:
        json.dump(out, f, indent=1)
