"""The slot protocol: order of pulls against compute, with a recording engine and the real CPU engine."""

import threading
import time

import pytest
import torch

from tensorrt_llm_dwdp.prefetch import CopySlice, DwdpProtocolError, LayerCopyPlan, Prefetcher
from tensorrt_llm_dwdp.prefetch.engine_cpu import CpuCopyEngine


class RecordingEngine:
    def __init__(self):
        self.log = []

    def issue(self, plan, slot):
        self.log.append(("pull", plan.layer, slot))

    def wait_fetch(self, slot):
        self.log.append(("wait", slot))
        return 0.0

    def record_compute_done(self, slot):
        self.log.append(("done", slot))

    def synchronize(self):
        self.log.append(("sync",))


def _plans(n):
    return [LayerCopyPlan(layer, ()) for layer in range(n)]


def _step(p, layers):
    p.begin_step()
    slots = []
    for layer in range(layers):
        slots.append(p.acquire(layer).slot)
        p.release(layer)
    p.end_step()
    return slots


@pytest.mark.parametrize("layers,depth", [(5, 2), (6, 3), (7, 3), (2, 2), (1, 3)])
def test_pull_of_l_plus_depth_follows_compute_done_of_l(layers, depth):
    eng = RecordingEngine()
    p = Prefetcher(eng, _plans(layers), depth)
    for _ in range(3):
        _step(p, layers)
    # Replay the log: a pull into a slot must come after the compute-done of the layer that read it,
    # and each wait must be on the slot holding the layer being computed.
    holder, busy, pulls = {}, set(), []
    for ev in eng.log:
        if ev[0] == "pull":
            _, layer, slot = ev
            assert slot not in busy, f"slot {slot} refilled while its MoE may still read it"
            holder[slot] = layer
            pulls.append(layer)
        elif ev[0] == "wait":
            busy.add(ev[1])
        else:
            busy.discard(ev[1])
    if layers <= depth:
        assert pulls == list(range(layers))  # each layer pulled once, slots kept
    else:
        assert pulls[:depth] == list(range(depth))
        assert pulls == [i % layers for i in range(len(pulls))]  # one pull per layer per step, in order
        assert len(pulls) == 3 * layers + depth  # the next step's first layers are already in flight


def test_out_of_order_calls_are_rejected():
    p = Prefetcher(RecordingEngine(), _plans(3), 2)
    with pytest.raises(DwdpProtocolError, match="begin_step"):
        p.acquire(0)
    p.begin_step()
    with pytest.raises(DwdpProtocolError, match="layer 0 is next"):
        p.acquire(1)
    p.acquire(0)
    with pytest.raises(DwdpProtocolError, match="end_step after 0 of 3"):
        p.end_step()
    with pytest.raises(DwdpProtocolError, match="twice"):
        p.begin_step()


@pytest.mark.parametrize("fail_at", [0, 1, 2])
def test_abort_step_leaves_a_usable_ring(fail_at):
    """A step that fails after acquiring layer `fail_at` (never released) is aborted; the next step runs every
    layer in order and every pull lands in a slot no unfinished compute still reads."""
    eng = RecordingEngine()
    p = Prefetcher(eng, _plans(3), 2)
    p.begin_step()
    for layer in range(fail_at):
        p.acquire(layer)
        p.release(layer)
    failed_slot = p.acquire(fail_at).slot
    p.abort_step()
    assert eng.log[-2:] == [("done", failed_slot), ("sync",)]  # its compute is over before anything refills it
    for _ in range(2):
        p.begin_step()
        for layer in range(3):
            p.acquire(layer)
            p.release(layer)
        p.end_step()


def test_cpu_engine_fills_slots_and_waits_for_compute():
    g = torch.Generator().manual_seed(1)
    peer = torch.randint(0, 255, (4096,), dtype=torch.uint8, generator=g)
    peers = {1: [peer[:2048], peer[2048:]]}  # two shard pieces of peer 1
    slots = [torch.zeros(1024, dtype=torch.uint8) for _ in range(2)]
    plans = [LayerCopyPlan(layer, (CopySlice(1, layer // 2, (layer % 2) * 1024, 0, 1024),)) for layer in range(4)]
    eng = CpuCopyEngine(2, {(layer, s): slots[s] for layer in range(4) for s in range(2)}, peers)
    p = Prefetcher(eng, plans, 2)
    try:
        for _ in range(2):
            p.begin_step()
            for layer in range(4):
                slot = p.acquire(layer).slot
                assert torch.equal(slots[slot], peer[layer * 1024:(layer + 1) * 1024])
                p.release(layer)
            p.end_step()
        # A pull into a slot whose compute is not done must not start.
        eng.synchronize()
        eng.compute_done[0].clear()
        slots[0].zero_()
        eng.issue(plans[3], 0)
        time.sleep(0.05)
        assert not eng.fetch_done[0].is_set() and int(slots[0].sum()) == 0
        threading.Timer(0.02, eng.record_compute_done, args=(0,)).start()
        assert eng.wait_fetch(0) > 0.0
        assert torch.equal(slots[0], peer[3072:4096])
    finally:
        eng.close()


def test_cpu_engine_reports_copy_failures():
    eng = CpuCopyEngine(1, {(0, 0): torch.zeros(8, dtype=torch.uint8)}, {})
    try:
        eng.issue(LayerCopyPlan(0, (CopySlice(5, 0, 0, 0, 8),)), 0)  # peer 5 was never mapped
        with pytest.raises(RuntimeError, match="copy thread failed"):
            eng.wait_fetch(0)
    finally:
        eng.close()
