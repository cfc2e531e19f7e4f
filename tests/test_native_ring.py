"""The hooks' native slot ring (the C++ DwdpContext in explicit step mode) against Prefetcher over CudaCopyEngine,
on one GPU: the same steps through both fill every slot with the layer's bytes, acquire the same slots with the
same freshness, report the same protocol errors as DwdpProtocolError, time the waits, and recover from a step
that failed between acquire and release."""

import pytest
import torch

from tensorrt_llm_dwdp.moe import ExpertWeights
from tensorrt_llm_dwdp.prefetch import CopySlice, DwdpProtocolError, LayerCopyPlan, Prefetcher, native

from conftest import fresh_seed

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
if not native.available():
    pytest.skip("the C++ extension is not built (or DWDP_NATIVE_RING=0)", allow_module_level=True)

E, I, H = 4, 128, 256
W13, W2 = E * 2 * I * H * 2, E * H * I * 2  # bytes (bf16)


def _ring(kind, layers, slots, sources, slice_bytes):
    """(ring, {(layer, slot): slot buffer}): each slot is one buffer, every layer's view of it the same memory."""
    from tensorrt_llm_dwdp.prefetch.engine_cuda import CudaCopyEngine
    dev = torch.device("cuda", torch.cuda.current_device())
    bufs = [torch.zeros(W13 + W2, dtype=torch.uint8, device=dev) for _ in range(slots)]
    regions = {(layer, s): bufs[s] for layer in range(layers) for s in range(slots)}
    views = {key: ExpertWeights(b[:W13].view(torch.bfloat16).view(E, 2 * I, H),
                                b[W13:].view(torch.bfloat16).view(E, H, I)) for key, b in regions.items()}
    plans = [LayerCopyPlan(layer, tuple(CopySlice(0, layer, o, o, min(slice_bytes, W13 + W2 - o))
                                        for o in range(0, W13 + W2, slice_bytes))) for layer in range(layers)]
    if kind == "native":
        slices = [[(sources[layer].data_ptr() + s.src_offset, s.dst_offset, s.nbytes) for s in p.slices]
                  for layer, p in enumerate(plans)]
        return native.NativeRing(views, slices, [b.data_ptr() for b in bufs], slots, dev), regions
    engine = CudaCopyEngine(slots, regions, {0: sources}, plans, dev)
    return Prefetcher(engine, plans, slots), regions


@pytest.mark.parametrize("layers,slots", [(3, 2), (2, 2), (5, 3)])
def test_native_ring_matches_the_python_ring(layers, slots):
    g = torch.Generator(device="cuda").manual_seed(fresh_seed())
    sources = [torch.randint(0, 256, (W13 + W2,), dtype=torch.uint8, device="cuda", generator=g)
               for _ in range(layers)]
    rings = {kind: _ring(kind, layers, slots, sources, 64 << 10) for kind in ("native", "python")}
    for step in range(3):
        for kind, (ring, regions) in rings.items():
            ring.begin_step()
        for layer in range(layers):
            got = {}
            for kind, (ring, regions) in rings.items():
                a = ring.acquire(layer)
                torch.cuda.current_stream().synchronize()  # the stream waited for the pull: the bytes are there
                assert torch.equal(regions[(layer, a.slot)], sources[layer]), (kind, step, layer)
                engine = ring if kind == "native" else ring.engine
                assert engine.seconds(a.wait) >= 0.0
                got[kind] = (a.slot, a.fresh)
                ring.release(layer)
            assert got["native"] == got["python"], (step, layer, got)
        for kind, (ring, _) in rings.items():
            ring.end_step()
            assert not ring.in_step
    for ring, _ in rings.values():
        (ring if isinstance(ring, native.NativeRing) else ring.engine).close()


def test_native_ring_errors_abort_and_unread_waits():
    g = torch.Generator(device="cuda").manual_seed(fresh_seed())
    sources = [torch.randint(0, 256, (W13 + W2,), dtype=torch.uint8, device="cuda", generator=g) for _ in range(3)]
    ring, regions = _ring("native", 3, 2, sources, 1 << 20)
    with pytest.raises(DwdpProtocolError, match="call begin_step first"):
        ring.acquire(0)
    ring.begin_step()
    with pytest.raises(DwdpProtocolError, match="layer 0 is next"):
        ring.acquire(1)
    records = [ring.acquire(0).wait]
    ring.release(0)
    records.append(ring.acquire(1).wait)
    ring.abort_step()  # the forward raised in layer 1: its slot is released, the ring starts empty
    assert not ring.in_step
    for _ in range(2):  # the next steps pull every layer afresh and hold the right bytes
        ring.begin_step()
        for layer in range(3):
            a = ring.acquire(layer)
            records.append(a.wait)
            torch.cuda.current_stream().synchronize()
            assert torch.equal(regions[(layer, a.slot)], sources[layer])
            ring.release(layer)
        ring.end_step()
    # waits read late, in any order, each once; their events are reused afterwards
    assert len(set(records)) == len(records) and all(r >= 0 for r in records)
    assert all(ring.seconds(r) >= 0.0 for r in reversed(records))
    with pytest.raises(ValueError, match="not an unread wait"):
        ring.seconds(records[0])
    ring.begin_step()
    assert ring.acquire(0).wait in records  # a freed timing pair is taken again
    ring.release(0)
    ring.close()
