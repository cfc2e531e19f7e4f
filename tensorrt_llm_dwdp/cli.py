"""`trtllm-dwdp`: doctor, verify (multi-rank correctness), bench (DWDP vs DEP), bench kernels, sim,
launch (a TensorRT-LLM command with DWDP)."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["launch"]:  # everything after `--` is the wrapped command: keep argparse away from it
        from .integrations.trtllm.launch import main as launch
        return launch(argv[1:])
    p = argparse.ArgumentParser(prog="trtllm-dwdp", description="Distributed Weight Data Parallelism for MoE")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("doctor", help="version, extension, GPUs, peer access, MPI")
    v = sub.add_parser("verify", help="run N ranks through DWDP and check them against a float64 reference",
                       description="Launches N ranks with mpirun; other options go to the job "
                                   "(see python -m tensorrt_llm_dwdp.verify --help).")
    v.add_argument("--ranks", type=int, default=4)
    v.add_argument("--timeout", type=float, default=None, help="seconds before the job is killed")
    sub.add_parser("bench", help="DWDP vs DEP on N ranks (`bench kernels`: the GPU data path)", add_help=False)
    sub.add_parser("sim", help="performance model: DWDP vs DEP TPS/GPU, speedup and crossover (CPU only; "
                               "`sim compare`: against bench results)",
                   add_help=False)
    sub.add_parser("launch", help="run a TensorRT-LLM command with DWDP: trtllm-dwdp launch [--dry-run] -- <cmd ...>",
                   add_help=False)
    args, rest = p.parse_known_args(argv)
    if args.cmd == "doctor":
        from .doctor import main as doctor
        return doctor()
    if args.cmd == "verify":
        from .launch import run_ranks
        from .verify.job import parse_args
        parse_args(rest)  # reject bad options before starting any rank
        return run_ranks(args.ranks, ["-m", "tensorrt_llm_dwdp.verify", *rest], timeout_s=args.timeout)
    if args.cmd == "bench":
        if rest[:1] == ["kernels"]:
            from .bench.kernels import main as kernels
            return kernels(rest[1:])
        from .runtime.bench import main as bench
        return bench(rest)
    if args.cmd == "sim":
        if rest[:1] == ["compare"]:
            from .sim.compare import main as compare
            return compare(rest[1:])
        from .sim.cli import main as sim
        return sim(rest)
    return 2


if __name__ == "__main__":
    sys.exit(main())
