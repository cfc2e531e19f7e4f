"""Peer-link bandwidth as DWDP pulls see it: copy-engine copies between the GPUs of one host.

  one peer:   GPU i pulls N bytes from GPU j alone (every ordered pair), as one copy and in slices;
  all pull:   every GPU pulls N bytes from every other GPU at once (the contention a DWDP forward
              makes), peer by peer ("plain") or in slices taken round-robin across peers with a start
              staggered by rank ("sliced", the prefetcher's plan);
  link peak:  the largest single-pair rate measured, for comparison.

Copies are issued with the C++ copy plan (cudaMemcpyBatchAsync) on one stream per destination GPU.
Usage: python benchmarks/link_bench.py [--mib 1024] [--slice-mib 2,32] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Dict, List

import torch


def _plan(triples):
    from tensorrt_llm_dwdp import _C
    return _C.CopyPlan(triples)


BATCHED = [True]  # cudaMemcpyBatchAsync; per-slice cudaMemcpyAsync where the driver refuses peer batches


def _run(jobs, reps: int = 5) -> float:
    try:
        return _timed(jobs, reps)
    except RuntimeError as e:
        if not BATCHED[0]:
            raise
        print(f"batched peer copies refused ({e}); issuing per slice")
        BATCHED[0] = False
        return _timed(jobs, reps)


def _timed(jobs, reps: int) -> float:
    """jobs: (device, plan, dst tensor) issued together; returns the median wall seconds over reps."""
    streams = {d: torch.cuda.Stream(device=d) for d, _, _ in jobs}
    times = []
    for _ in range(reps + 1):
        for d in streams:
            torch.cuda.synchronize(d)
        t0 = time.perf_counter()
        for d, plan, dst in jobs:
            with torch.cuda.device(d):
                plan.issue(dst.data_ptr(), streams[d].cuda_stream, batched=BATCHED[0])
        for d in streams:
            streams[d].synchronize()
        times.append(time.perf_counter() - t0)
    times = sorted(times[1:])
    return times[len(times) // 2]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mib", type=int, default=1024, help="bytes each GPU pulls from each peer, in MiB")
    p.add_argument("--slice-mib", default="2,32", help="slice sizes to compare, MiB, comma list")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    n = torch.cuda.device_count()
    if n < 2:
        print(f"link bench needs at least 2 GPUs; {n} visible")
        return 2
    nbytes, sizes = args.mib << 20, [int(m) for m in args.slice_mib.split(",")]
    src = [torch.empty(nbytes, dtype=torch.uint8, device=f"cuda:{d}").random_() for d in range(n)]
    dst = [torch.empty((n - 1) * nbytes, dtype=torch.uint8, device=f"cuda:{d}") for d in range(n)]
    for i in range(n):  # enables peer access both ways (torch does it on the first peer copy)
        for j in range(n):
            if i != j:
                dst[i][:16].copy_(src[j][:16])
    torch.cuda.synchronize()
    access = {f"{i}<-{j}": torch.cuda.can_device_access_peer(i, j) for i in range(n) for j in range(n) if i != j}
    print(f"{n} GPUs: {torch.cuda.get_device_name(0)}; peer access: {access}")

    def slices(j: int, off0: int, mib):
        """Peer j's bytes as copies of `mib` MiB (None: one copy) landing at off0 in the slot."""
        step = nbytes if mib is None else mib << 20
        return [(src[j].data_ptr() + o, off0 + o, min(step, nbytes - o)) for o in range(0, nbytes, step)]

    rows: List[Dict] = []
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            for mib in (None, *sizes):
                t = _run([(i, _plan(slices(j, 0, mib)), dst[i])])
                rows.append({"case": "one peer", "dst": i, "src": j,
                             "slicing": "one copy" if mib is None else f"{mib} MiB", "gbps": nbytes / t / 1e9})
    peak = max(r["gbps"] for r in rows)
    for mib in (None, *sizes):
        jobs = []
        for i in range(n):
            peers = [j for j in range(n) if j != i]
            offs = {j: k * nbytes for k, j in enumerate(peers)}
            if mib is None:  # peer after peer, one copy each
                triples = [t for j in peers for t in slices(j, offs[j], None)]
            else:  # round-robin over peers, start staggered by rank so ranks do not all hit one peer at once
                per = {j: slices(j, offs[j], mib) for j in peers}
                order = peers[i % len(peers):] + peers[:i % len(peers)]
                triples = [per[j][s] for s in range(len(per[peers[0]])) for j in order]
            jobs.append((i, _plan(triples), dst[i]))
        t = _run(jobs)
        total = n * (n - 1) * nbytes
        rows.append({"case": "all pull", "dst": "all", "src": "all",
                     "slicing": "plain" if mib is None else f"round-robin {mib} MiB",
                     "gbps": total / t / 1e9, "per_gpu_gbps": total / n / t / 1e9,
                     "of_peak": total / n / t / 1e9 / peak})
    print(f"{'case':>10} {'dst':>4} {'src':>4} {'slicing':>20} {'GB/s':>9} {'GB/s/GPU':>9} {'of peak':>8}")
    for r in rows:
        print(f"{r['case']:>10} {r['dst']!s:>4} {r['src']!s:>4} {r['slicing']:>20} {r['gbps']:>9.1f} "
              f"{r.get('per_gpu_gbps', r['gbps']):>9.1f} {r.get('of_peak', r['gbps'] / peak):>8.2f}")
    print(f"link peak (best single pair): {peak:.1f} GB/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpus": n, "device": torch.cuda.get_device_name(0), "mib": args.mib, "rows": rows,
                       "peak_gbps": peak, "peer_access": access}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
