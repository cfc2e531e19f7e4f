"""Requests and iterations: ISL distributions, and packing requests by max_num_tokens.

A context-phase server takes requests first come first served and packs them into an
iteration until the next one would exceed max_num_tokens. A request longer than the budget
is cut into chunks (chunked prefill); with `chunked=True` every iteration is filled to the
budget exactly, the last request of an iteration continuing in the next.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from ..workload import ISL_KINDS, IslDist, parse_isl  # noqa: F401 - re-exported for the sim's users
from .costs import Chunk

@dataclass(frozen=True)
class Batch:
    """One iteration of one rank: chunks of requests."""

    chunks: Tuple[Chunk, ...]

    @property
    def tokens(self) -> int:
        return sum(c.tokens for c in self.chunks)


def pack(isls, max_num_tokens: int, chunked: bool = False, max_batch_size: Optional[int] = None) -> List[Batch]:
    """Pack requests (in order) into iterations of at most max_num_tokens tokens and at most
    max_batch_size requests (None: no limit) each."""
    if max_num_tokens < 1:
        raise ValueError(f"--max-num-tokens {max_num_tokens}: must be >= 1. Fix: e.g. --max-num-tokens 16384.")
    if max_batch_size is not None and max_batch_size < 1:
        raise ValueError(f"--max-batch-size {max_batch_size}: must be >= 1. Fix: e.g. --max-batch-size 1.")
    cap = max_batch_size or (1 << 62)
    batches: List[Batch] = []
    cur: List[Chunk] = []
    room = max_num_tokens
    for isl in (int(x) for x in isls):
        done = 0
        while done < isl:
            left = isl - done
            if left <= room or (chunked or not cur):
                take = min(left, room)
                cur.append(Chunk(take, done))
                done += take
                room -= take
            if room == 0 or done < isl or len(cur) == cap:
                batches.append(Batch(tuple(cur)))
                cur, room = [], max_num_tokens
    if cur:
        batches.append(Batch(tuple(cur)))
    return batches


def rank_batches(isl: IslDist, max_num_tokens: int, iterations: int, rng: np.random.Generator,
                 chunked: bool = False, max_batch_size: Optional[int] = None) -> List[Batch]:
    """`iterations` batches of one rank's own request stream (saturated server: always a queue).

    NOTE: the last batch is dropped (it may be a partial one made only because the sample
    ran out), so every batch returned is what a server with a queue would have run."""
    need = max(4, int(math.ceil(iterations * max_num_tokens / isl.mean)) + 2)
    while True:
        batches = pack(isl.sample(rng, need), max_num_tokens, chunked, max_batch_size)
        if len(batches) > iterations:
            return batches[:iterations]
        need *= 2
