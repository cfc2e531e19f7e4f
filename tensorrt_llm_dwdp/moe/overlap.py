"""The shared expert beside the routed experts: on GPUs a side stream (one per device, made once) runs it while the
current stream routes, exchanges and computes the routed experts, so DEP's dispatch (and DWDP's wait for its
pull) hides behind it; every mode goes through here, so each gets the same overlap. CPU: one after the other.

Fork and join are stream waits (events), never host syncs, so a step stays capturable in a CUDA graph.
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch

_SIDE: Dict[torch.device, "torch.cuda.Stream"] = {}


def side_stream(device: torch.device) -> "torch.cuda.Stream":
    """The device's side stream, made on first use."""
    device = torch.device(device)
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    stream = _SIDE.get(device)
    if stream is None:
        stream = _SIDE[device] = torch.cuda.Stream(device)
    return stream


def beside(x: torch.Tensor, main: Callable[[], torch.Tensor],
           side: Callable[[torch.Tensor], torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(main(), side(x)); on CUDA side(x) runs on the side stream concurrently with main() on the current one.

    The side stream first waits for the current stream (x is ready), the current stream waits for the side
    stream's work before returning, and each tensor used on a stream it was not allocated on is recorded there, so
    the caching allocator does not hand its memory out while the other stream may still read it."""
    if not x.is_cuda:
        return main(), side(x)
    current = torch.cuda.current_stream(x.device)
    stream = side_stream(x.device)
    stream.wait_stream(current)
    with torch.cuda.stream(stream):
        s = side(x)
    x.record_stream(stream)
    m = main()
    current.wait_stream(stream)
    s.record_stream(current)
    return m, s
