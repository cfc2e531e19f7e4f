"""Iterations of the simulated ranks: request streams packed by the runtime's rule (`workloads.requests.take_batch`).

A context-phase server takes requests first come first served and packs them into an
iteration until the next one would exceed max_num_tokens. A request longer than the budget
is cut into chunks; with `chunked=True` every iteration is filled to the budget exactly, the
last request of an iteration continuing in the next. Requests are drawn lazily, one when an
iteration has room for it.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass
from typing import Deque, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from ..workloads import requests
from ..workloads.requests import IslDist
from .costs import Chunk

@dataclass(frozen=True)
class Batch:
    """One iteration of one rank: chunks of requests."""

    chunks: Tuple[Chunk, ...]

    @property
    def tokens(self) -> int:
        return sum(c.tokens for c in self.chunks)


# Requests one iteration of one rank may hold: the model keeps a Python object per request chunk, so a budget
# of millions of one-token requests would build millions of them per iteration. Engines cap a batch too
# (TensorRT-LLM's max_batch_size defaults to 2048).
MAX_REQUESTS_PER_ITERATION = 1 << 16


def _pack(isls: Iterable[int], max_num_tokens: int, chunked: bool, max_batch_size: Optional[int],
          limit: Optional[int]) -> Iterator[Batch]:
    stream, ids = iter(isls), itertools.count()

    def refill() -> Optional[requests.Chunk]:
        for isl in stream:
            return requests.whole(requests.Request(next(ids), int(isl)))
        return None

    waiting: Deque[requests.Chunk] = deque()
    made = 0
    while limit is None or made < limit:  # NOTE: a request longer than `limit` iterations is not walked to its end
        batch = requests.take_batch(waiting, max_num_tokens, chunked, max_batch_size, refill)
        if not batch:
            return
        yield Batch(tuple(Chunk(c.n, c.offset) for c in batch))
        made += 1


def pack(isls, max_num_tokens: int, chunked: bool = False, max_batch_size: Optional[int] = None,
         limit: Optional[int] = None) -> List[Batch]:
    """Pack requests (in order) into iterations of at most max_num_tokens tokens and at most
    max_batch_size requests (None: no limit) each; at most `limit` iterations (None: all)."""
    if max_num_tokens < 1:
        raise ValueError(f"--max-num-tokens {max_num_tokens}: must be >= 1. Fix: e.g. --max-num-tokens 16384.")
    if max_batch_size is not None and max_batch_size < 1:
        raise ValueError(f"--max-batch-size {max_batch_size}: must be >= 1. Fix: e.g. --max-batch-size 1.")
    return list(_pack((int(x) for x in isls), max_num_tokens, chunked, max_batch_size, limit))


def requests_per_iteration(isl: IslDist, max_num_tokens: int, max_batch_size: Optional[int] = None) -> int:
    """How many requests a full iteration holds, about (at least 1)."""
    n = max(1, int(math.ceil(max_num_tokens / max(isl.mean * (1 - min(isl.cv, 0.9)), 1.0))))
    return min(n, max_batch_size) if max_batch_size else n


def check_packing(isl: IslDist, max_num_tokens: int, max_batch_size: Optional[int] = None) -> None:
    """Refuse an iteration of more requests than the model walks one by one (ValueError naming the options)."""
    n = requests_per_iteration(isl, max_num_tokens, max_batch_size)
    if n > MAX_REQUESTS_PER_ITERATION:
        raise ValueError(f"--max-num-tokens {max_num_tokens}: with --isl {isl} an iteration holds ~{n} requests, more "
                         f"than the {MAX_REQUESTS_PER_ITERATION} the model simulates. Fix: --max-batch-size "
                         f"{MAX_REQUESTS_PER_ITERATION} or less, a longer --isl, or a smaller --max-num-tokens.")


def rank_batches(isl: IslDist, max_num_tokens: int, iterations: int, rng: np.random.Generator,
                 chunked: bool = False, max_batch_size: Optional[int] = None) -> List[Batch]:
    """`iterations` batches of one rank's own request stream (saturated server: always a queue).

    Requests are drawn in blocks until the iterations are full, so neither a long ISL nor a large budget
    draws more requests than those iterations hold.
    NOTE: the batch after the last one returned must have started, so every batch returned is what a
    server with a queue would have run (not a partial one made because the sample ran out)."""
    check_packing(isl, max_num_tokens, max_batch_size)
    block = max(4, min(requests_per_iteration(isl, max_num_tokens, max_batch_size) * 2, 1 << 16))

    def stream() -> Iterator[int]:
        while True:
            yield from (int(x) for x in isl.sample(rng, block))

    batches = list(_pack(stream(), max_num_tokens, chunked, max_batch_size, iterations + 1))
    return batches[:iterations]
