"""DEP's token exchange alone (moe/exchange.py): bytes/s per GPU and host time per MoE layer.

    mpirun -n 2 python benchmarks/exchange_bench.py --tokens 16384 --hidden 2048 --experts 128 --top-k 8 \
        --backends nccl,symm_mem --json out.json

One rank per GPU runs NCCL (and symm_mem where it initialises); ranks sharing a GPU, or CPU ranks,
run gloo (a correctness path: its speed says nothing). Per backend and way of sizing the received rows
(`--rows`: exact reads the received counts on the host once per layer, bound keeps static shapes): a check
against all-local expert math on the same rows (identity experts: each row comes back as sum of its routing
weights x row), then `--iters` timed dispatch+combine pairs. Reported per rank: payload bytes (rows that carry a
token, both directions), device time (CUDA events), host time to enqueue one layer's pair.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> int:
    from mpi4py import MPI
    from tensorrt_llm_dwdp.config import DepRows
    from tensorrt_llm_dwdp.moe.exchange import AllToAllExchange, CommClock, ExchangeBackend, ExchangeUnavailable
    from tensorrt_llm_dwdp.placement import even_placement
    from tensorrt_llm_dwdp.runtime.dep import init_torch_distributed, shutdown_torch_distributed

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--experts", type=int, default=128)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--backends", default="nccl,symm_mem")
    p.add_argument("--rows", default="exact,bound", help="comma list of exact, bound (config.DepRows)")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dtype = torch.bfloat16 if cuda else torch.float32
    stage = init_torch_distributed(comm, device)
    placement = even_placement(args.experts, world)  # what DEP uses; uneven when experts do not divide
    owner = torch.empty(args.experts, dtype=torch.long)
    local_index = torch.empty(args.experts, dtype=torch.long)
    for r, mine in enumerate(placement.ranks):
        owner[list(mine)] = r
        local_index[list(mine)] = torch.arange(len(mine))
    num_local = [len(m) for m in placement.ranks]
    per = num_local[rank]
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(args.tokens, args.hidden, generator=g).to(device, dtype)
    ids = torch.stack([torch.randperm(args.experts, generator=g)[:args.top_k] for _ in range(args.tokens)]).to(device)
    w = torch.rand(args.tokens, args.top_k, generator=g).to(device)
    names = ["gloo"] if (stage or not cuda) else args.backends.split(",")
    out = []
    for name, rows_kind in [(n, DepRows(r)) for n in names for r in args.rows.split(",")]:
        clock = CommClock(device)
        try:
            ex = AllToAllExchange(owner, local_index, num_local, args.tokens, ExchangeBackend(name), device, clock,
                                  rows=rows_kind)
        except ExchangeUnavailable as e:
            out.append({"backend": name, "rows": rows_kind.value, "rank": rank, "unavailable": str(e)})
            continue

        def layer():
            got = ex.dispatch(x, ids, w)
            # identity experts: each received row times the sum of its local weights
            rows = got.rows.index_select(0, got.row_index)
            y = (rows.float() * (got.weights * (got.local_ids < per)).sum(1, keepdim=True)).to(dtype)
            return ex.combine(y, got)

        y = layer()
        ok = torch.allclose(y.float(), x.float() * w.sum(1, keepdim=True), atol=3e-2, rtol=3e-2)
        for _ in range(3):
            layer()
        if cuda:
            torch.cuda.synchronize()
        clock.take_device_s()
        host = 0.0
        for _ in range(args.iters):
            t0 = time.perf_counter()
            got = ex.dispatch(x, ids, w)
            ex.combine(got.rows.index_select(0, got.row_index), got)
            host += time.perf_counter() - t0
        if cuda:
            torch.cuda.synchronize()
        dev = clock.take_device_s() / args.iters
        plan_rows = int((ex.dispatch(x, ids, w).plan.slot >= 0).sum())
        row_bytes = args.hidden * x.element_size()
        payload = 2 * plan_rows * row_bytes  # out and back, rows that carry a token
        out.append({"backend": name, "rows": rows_kind.value, "rank": rank, "ok": bool(ok), "device_s_per_layer": dev,
                    "host_s_per_layer": host / args.iters, "payload_bytes": payload,
                    "payload_GBps": payload / dev / 1e9 if dev > 0 else None,
                    "moved_bytes": 2 * world * args.tokens * row_bytes if name != "symm_mem" else payload})
    shutdown_torch_distributed()
    rows = comm.gather(out, root=0)
    if rank == 0:
        flat = [r for rs in rows for r in rs]
        for r in flat:
            print(r)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "world": world, "device": str(device), "results": flat}, f, indent=1)
        return 0 if all(r.get("ok", True) for r in flat) else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
