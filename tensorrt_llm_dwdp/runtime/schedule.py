"""Attention-DP request balancing: one shared request stream, each request to the least-loaded rank.

TensorRT-LLM's attention-DP scheduler (`balance_requests_across_ranks`) hands new requests, largest
first, to the rank with the fewest active tokens (a heap over ranks); SGLang's data-parallel
controller offers the same as its shortest-queue policy. Here every rank computes the assignment
from the same stream and seed, so no message is needed, and every mode serves the same split.

Load is the tokens assigned so far: the executor serves prefill only, and ranks of one mode run at
the same speed, so assigned tokens stand for the active tokens the engines compare.
"""

from __future__ import annotations

import heapq
from itertools import groupby
from typing import List, Sequence

from ..workloads.requests import Request


def least_loaded(requests: Sequence[Request], world: int) -> List[List[Request]]:
    """Split `requests` over `world` ranks: requests arriving together, largest first, each to the
    rank with the fewest tokens so far (ties: lowest rank). Each rank's list keeps arrival order."""
    if world < 1:
        raise ValueError(f"world={world}: must be >= 1")
    heap = [(0, r) for r in range(world)]
    out: List[List[Request]] = [[] for _ in range(world)]
    for _, same_time in groupby(sorted(requests, key=lambda q: (q.arrival_s, q.id)), key=lambda q: q.arrival_s):
        for q in sorted(same_time, key=lambda q: (-q.isl, q.id)):
            load, r = heapq.heappop(heap)
            out[r].append(q)
            heapq.heappush(heap, (load + q.isl, r))
    for lst in out:
        lst.sort(key=lambda q: (q.arrival_s, q.id))
    return out
