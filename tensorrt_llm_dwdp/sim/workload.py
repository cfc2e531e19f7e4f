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

from .costs import Chunk

ISL_KINDS = ("fixed", "normal", "lognormal", "uniform")


@dataclass(frozen=True)
class IslDist:
    """Input sequence length distribution: `kind` with mean (tokens) and cv (std / mean).

    normal: clipped to [1, 2 * mean] (symmetric, so the mean is kept).
    lognormal: sigma^2 = ln(1 + cv^2), mu = ln(mean) - sigma^2 / 2.
    uniform: on [mean * (1 - sqrt(3) cv), mean * (1 + sqrt(3) cv)], cv <= 1/sqrt(3).
    """

    kind: str
    mean: float
    cv: float = 0.0

    def __post_init__(self):
        if self.kind not in ISL_KINDS:
            raise ValueError(f"--isl kind {self.kind!r}: unknown. Fix: use one of {', '.join(ISL_KINDS)}.")
        if not self.mean >= 1:
            raise ValueError(f"--isl mean {self.mean}: must be >= 1 token. Fix: e.g. --isl 8192.")
        if self.cv < 0 or (self.kind == "uniform" and self.cv > 1 / math.sqrt(3)):
            raise ValueError(f"--isl cv {self.cv}: out of range. Fix: 0 <= cv (<= 0.577 for uniform).")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n ISLs (int64, >= 1)."""
        m, cv = self.mean, self.cv
        if self.kind == "fixed" or cv == 0:
            x = np.full(n, m)
        elif self.kind == "normal":
            x = np.clip(rng.normal(m, cv * m, n), 1, 2 * m)
        elif self.kind == "lognormal":
            s2 = math.log1p(cv * cv)
            x = rng.lognormal(math.log(m) - s2 / 2, math.sqrt(s2), n)
        else:
            h = math.sqrt(3) * cv * m
            x = rng.uniform(m - h, m + h, n)
        return np.maximum(np.rint(x), 1).astype(np.int64)

    def __str__(self) -> str:
        if self.kind == "fixed" or self.cv == 0:
            return f"{int(self.mean)}"
        return f"{self.kind}:{int(self.mean)}:{self.cv:g}"


def parse_isl(spec: str) -> IslDist:
    """'8192' (fixed), or 'KIND:MEAN:CV' with KIND in normal, lognormal, uniform."""
    parts = spec.strip().split(":")
    try:
        if len(parts) == 1:
            return IslDist("fixed", float(parts[0]))
        if len(parts) == 3:
            return IslDist(parts[0].lower(), float(parts[1]), float(parts[2]))
    except ValueError as e:
        if "--isl" in str(e):
            raise
    raise ValueError(f"--isl {spec!r}: not understood. Fix: a fixed length such as 8192, or KIND:MEAN:CV "
                     f"such as normal:8192:0.2 (KIND: normal, lognormal, uniform).")


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
