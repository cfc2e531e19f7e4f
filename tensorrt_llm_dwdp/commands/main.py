"""`trtllm-dwdp`: doctor, verify (multi-rank correctness), bench (DWDP vs DEP), bench kernels, sim,
launch (a TensorRT-LLM command with DWDP).

Bad input gets one line, `trtllm-dwdp <cmd>: error: ...`, and exit code 2, before any rank starts.
"""

from __future__ import annotations

import sys
from typing import List, Optional

from .usage import Parser, UsageError, fail, one_line_errors


def _verify(args, rest: List[str]) -> int:
    from .mpirun import check_ranks, run_ranks
    from ..verify.job import parse_args, plan
    check_ranks(args.ranks)
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError(f"--timeout {args.timeout:g}: must be > 0 seconds. Fix: e.g. --timeout 300, or leave it out.")
    plan(parse_args(rest, prog="trtllm-dwdp verify"), args.ranks)  # the ranks' own checks, before any of them starts
    if args.dry_run:
        from .mpirun import mpirun_command
        print(" ".join(mpirun_command(args.ranks, ["-m", "tensorrt_llm_dwdp.verify", *rest])))
        print("every option checked; nothing was run")
        return 0
    return run_ranks(args.ranks, ["-m", "tensorrt_llm_dwdp.verify", *rest], timeout_s=args.timeout,
                     prog="trtllm-dwdp verify")


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["launch"]:  # everything after `--` is the wrapped command: keep argparse away from it
        from ..integrations.trtllm.launch import main as launch
        return launch(argv[1:])
    p = Parser(prog="trtllm-dwdp", description="Distributed Weight Data Parallelism for MoE")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=Parser)
    sub.add_parser("doctor", help="version, extension, GPUs, peer access, MPI")
    v = sub.add_parser("verify", help="run N ranks through DWDP and check them against a float64 reference",
                       description="Launches N ranks with mpirun; other options go to the job "
                                   "(see python -m tensorrt_llm_dwdp.verify --help).")
    v.add_argument("--ranks", type=int, default=4)
    v.add_argument("--timeout", type=float, default=None, help="seconds before every rank is stopped")
    v.add_argument("--dry-run", action="store_true", help="check every option, print the command, and exit")
    sub.add_parser("bench", help="DWDP vs DEP on N ranks (`bench kernels`: the GPU data path)", add_help=False)
    sub.add_parser("sim", help="performance model: DWDP vs DEP TPS/GPU, speedup and crossover (CPU only; "
                               "`sim compare`: against bench results)",
                   add_help=False)
    sub.add_parser("launch", help="run a TensorRT-LLM command with DWDP: trtllm-dwdp launch [--dry-run] -- <cmd ...>",
                   add_help=False)
    try:
        args, rest = p.parse_known_args(argv)
    except UsageError as e:
        return fail("trtllm-dwdp", e)
    if args.cmd == "doctor":
        if rest:
            return fail("trtllm-dwdp doctor", f"unrecognized arguments: {' '.join(rest)}. Fix: doctor takes none.")
        from .doctor import main as doctor
        return doctor()
    if args.cmd == "verify":
        return one_line_errors("trtllm-dwdp verify", _verify, args, rest)
    if args.cmd == "bench":
        if rest[:1] == ["kernels"]:
            from ..bench.kernels import main as kernels
            return kernels(rest[1:])
        from ..bench.command import main as bench
        return bench(rest)
    if args.cmd == "sim":
        if rest[:1] == ["compare"]:
            from ..sim.compare import main as compare
            return compare(rest[1:])
        from ..sim.cli import main as sim
        return sim(rest)
    return 2


if __name__ == "__main__":
    sys.exit(main())
