"""One `bench kernels` run under mpirun: every rank sets up the hooks, rank 0 measures and reports."""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import List, Optional

import torch

from ...bootstrap import run_or_abort
from ...prefetch import native
from . import gemm, overlap, parse_args, write_json
from .setup import fmt_table, measure_peaks, setup_hooks

# NOTE: peers wait at the hooks' shutdown barrier while rank 0 measures; give them the whole run.
PEER_WAIT_S = 3600.0


def run(args) -> int:
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    if not torch.cuda.is_available():
        if rank == 0:
            print("trtllm-dwdp bench kernels: error: needs a CUDA GPU (it measures the GPU data path)")
        return 2
    torch.cuda.set_device(rank % torch.cuda.device_count())
    measure = rank == 0
    sections = args.sections.split(",")
    shapes, dtypes = args.shapes.split(","), args.dtypes.split(",")
    tokens = [int(t) for t in args.tokens.split(",")]
    out = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "ranks": comm.Get_size(),
           "gemm": [], "kernels": [], "rows": [], "overlap": [], "hooks": []}
    if measure:
        out["peaks"] = measure_peaks()
        torch.cuda.empty_cache()
        print("peaks: " + ", ".join(f"{k} {v:.0f}" for k, v in out["peaks"].items()), flush=True)
    for shape in shapes:
        for dtype in dtypes:
            if "gemm" in sections or "rows" in sections:
                with _hooks(shape, dtype, 1, comm, args) as hooks:
                    if measure:
                        for name, rows in gemm.sections(hooks, sections, shape, dtype, tokens,
                                                        args.routing.split(","), out["peaks"]).items():
                            out[name] += rows
                torch.cuda.empty_cache()  # the next setup allocates with cuMemCreate, outside torch's cache
            if "overlap" in sections or "hooks" in sections:
                with _hooks(shape, dtype, 3, comm, args) as hooks:
                    if measure and "overlap" in sections:
                        out["overlap"] += [overlap.run(hooks, shape, dtype, t) for t in tokens]
                    if measure and "hooks" in sections:
                        out["hooks"].append(dict(shape=shape, dtype=dtype, **overlap.host_time(hooks)))
            if "hooks" in sections and native.available():  # the same hook calls through torch's Python CUDA API
                torch.cuda.empty_cache()
                with _python_ring(), _hooks(shape, dtype, 3, comm, args) as hooks:
                    if measure:
                        out["hooks"].append(dict(shape=shape, dtype=dtype, **overlap.host_time(hooks)))
                        mine, python = out["hooks"][-2:]
                        mine["python_over_native"] = python["layer_us_p50"] / mine["layer_us_p50"]
            torch.cuda.empty_cache()
    if not measure:
        return 0
    out["fp8_over_bf16"] = gemm.fp8_over_bf16(out["gemm"])
    out["kernel_ratios"] = gemm.kernel_ratios(out["kernels"])
    print(f"\nbench kernels on {out['device']}, {out['date']}: {comm.Get_size()} ranks, rank 0 measures")
    for name, cols in (("gemm", ["shape", "dtype", "routing", "tokens", "rows128_over_real", "kernel",
                                 "composite_ms", "ordinary_ms", "composite_over_ordinary", "gemm_tflops",
                                 "gemm_of_peak", "gemm1_of_peak",
                                 "gemm2_of_peak", "gemm_over_dense", "mlp_ms", "mlp_speedup_over_cutlass"]),
                       ("kernels", ["shape", "dtype", "routing", "tokens", "kernel", "composite_ms", "ordinary_ms",
                                    "gemm_tflops", "gemm_of_peak", "gemm1_of_peak", "gemm2_of_peak", "dense_ms",
                                    "mlp_ms", "mlp_on", "note"]),
                       ("rows", ["shape", "dtype", "tokens", "experts_used", "rows_per_expert", "kernel", "on",
                                 "gemm_ms", "gemm_tflops", "gemm_of_peak"]),
                       ("kernel_ratios", ["shape", "dtype", "routing", "tokens", "vs", "on", "gemm_speedup",
                                          "mlp_speedup"]),
                       ("fp8_over_bf16", ["shape", "routing", "tokens", "fp8_mlp_over_bf16"]),
                       ("overlap", ["shape", "dtype", "tokens", "mlp_alone_ms", "mlp_with_pull_ms", "slowdown",
                                    "pull_mib", "pull_ms", "pull_gbps"]),
                       ("hooks", ["shape", "dtype", "layers", "ring", "pull_issue", "layer_us_p50", "layer_us_p90",
                                  "step_us_p50", "python_over_native"])):
        if out.get(name):
            print(f"\n{name}:\n{fmt_table(out[name], cols)}")
    if args.json:
        write_json(args.json, out)
    return 0


@contextmanager
def _python_ring():
    """Hooks set up inside drive their ring through Prefetcher over CudaCopyEngine (DWDP_NATIVE_RING=0)."""
    before = os.environ.get(native.ENV)
    os.environ[native.ENV] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ[native.ENV]
        else:
            os.environ[native.ENV] = before


class _hooks:
    """setup_hooks as a context: rank 0 closes when done measuring; the others wait for it at the barrier."""

    def __init__(self, shape, dtype, layers, comm, args):
        self.hooks = setup_hooks(shape, dtype, layers, comm, int(args.slice_mib * 2**20))
        self.rank = comm.Get_rank()

    def __enter__(self):
        return self.hooks

    def __exit__(self, *exc):
        self.hooks.close(timeout_s=PEER_WAIT_S)


def main(argv: Optional[List[str]] = None) -> int:
    return run_or_abort(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
