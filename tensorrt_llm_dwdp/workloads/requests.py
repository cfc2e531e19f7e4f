"""Request workloads shared by the runtime and the simulator: ISL distributions, arrivals, traces, and the
one rule that packs requests into iterations (the runtime's executor runs it, the simulator predicts with it).

Seeds are explicit so a run can be repeated and its results say what they were made from.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, List, Optional

import numpy as np

ISL_KINDS = ("fixed", "normal", "lognormal", "uniform")
# Bounds that keep a mistyped value from sampling or packing without end. 16M tokens is far beyond any
# context window served today; a CV of 10 is a lognormal whose p99 is ~40x its mean.
MAX_ISL = 1 << 24
MAX_CV = 10.0


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
        if not 1 <= self.mean <= MAX_ISL:
            raise ValueError(f"--isl mean {self.mean:g}: must be 1 to {MAX_ISL} tokens. Fix: e.g. --isl 8192.")
        if not 0 <= self.cv <= MAX_CV or (self.kind == "uniform" and self.cv > 1 / math.sqrt(3)):
            raise ValueError(f"--isl cv {self.cv:g}: out of range. Fix: 0 <= cv <= {MAX_CV:g} (<= 0.577 for uniform).")

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
        return np.clip(np.rint(x), 1, MAX_ISL).astype(np.int64)

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
class Request:
    """One context-phase request: `isl` prompt tokens arriving at `arrival_s` (0 = closed loop)."""

    id: int
    isl: int
    arrival_s: float = 0.0


@dataclass(frozen=True)
class Chunk:
    """Tokens [offset, offset + n) of a request; `last` when it completes the request."""

    request: Request
    offset: int
    n: int

    @property
    def last(self) -> bool:
        return self.offset + self.n == self.request.isl


def whole(request: Request) -> Chunk:
    return Chunk(request, 0, request.isl)


def take_batch(waiting: Deque[Chunk], max_num_tokens: int, chunked: bool, max_batch_size: Optional[int] = None,
               refill: Optional[Callable[[], Optional[Chunk]]] = None) -> List[Chunk]:
    """One iteration from the front of `waiting` (FCFS, mutated): whole requests while they fit, at most
    `max_batch_size` of them (None: no cap). With `chunked`, the first one that does not fit is split and its
    rest stays at the front. A request longer than the whole budget is split even without `chunked`, alone in
    its iterations (the runtime refuses such a request before it packs; the simulator's ISL tails reach it).
    `refill` (the simulator's lazy stream) is asked for the next request only when `waiting` is empty and
    the iteration has room; it returns None when there is none."""
    batch: List[Chunk] = []
    room = max_num_tokens
    while room > 0 and (max_batch_size is None or len(batch) < max_batch_size):
        if not waiting:
            nxt = refill() if refill is not None else None
            if nxt is None:
                break
            waiting.append(nxt)
        head = waiting[0]
        if head.n <= room:
            batch.append(waiting.popleft())
            room -= head.n
        elif chunked or not batch:
            batch.append(Chunk(head.request, head.offset, room))
            waiting[0] = Chunk(head.request, head.offset + room, head.n - room)
            room = 0
        else:
            break
    return batch


def queue(requests: List[Request]) -> Deque[Chunk]:
    """`requests` waiting whole, in order."""
    return deque(whole(q) for q in requests)


def make_requests(isl: IslDist, num: int, seed: int, rate: Optional[float] = None) -> List[Request]:
    """`num` requests with ISLs from `isl`; Poisson arrivals at `rate` requests/s, or all at t=0."""
    if num < 0:
        raise ValueError(f"--requests {num}: must be >= 0")
    if rate is not None and not 0 < rate < math.inf:
        raise ValueError(f"--request-rate {rate}: must be > 0 requests/s, or omit it for a closed loop")
    rng = np.random.default_rng(seed)
    isls = isl.sample(rng, num)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, num)) if rate else np.zeros(num)
    return [Request(i, int(n), float(a)) for i, (n, a) in enumerate(zip(isls, arrivals))]


def load_trace(path: str) -> List[Request]:
    """JSONL, one request per line: {"isl": int, "arrival_s": float (optional)}."""
    try:
        f = open(path, errors="replace")
    except OSError as e:
        raise ValueError(f"--trace {path}: cannot be read ({e.strerror}). Fix: name a JSONL file, one request "
                         "per line.") from None
    out = []
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                isl, arrival = rec["isl"], rec.get("arrival_s", 0.0)
                if isinstance(isl, bool) or not isinstance(isl, (int, float)) or isl != int(isl):
                    raise ValueError(f"isl {isl!r} is not an integer")
                if isinstance(arrival, bool) or not isinstance(arrival, (int, float)) or not 0 <= arrival < math.inf:
                    raise ValueError(f"arrival_s {arrival!r} is not a time >= 0 in seconds")
                out.append(Request(len(out), int(isl), float(arrival)))
            except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as e:
                raise ValueError(f"--trace {path}:{lineno}: {e}. Fix: one JSON object per line with an "
                                 "integer 'isl' and an optional 'arrival_s'") from None
            if not 1 <= out[-1].isl <= MAX_ISL:
                raise ValueError(f"--trace {path}:{lineno}: isl {out[-1].isl} is outside 1..{MAX_ISL}. "
                                 "Fix: correct that line.")
    return out
