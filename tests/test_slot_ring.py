"""The C++ slot ring (the TensorRT plugin's prefetch protocol) against the Python Prefetcher, call by call.

Both are driven by the same random call sequences, valid steps and out-of-order calls alike: every pull
issued, every acquired slot and freshness, and every protocol error (sentence included) must match.
"""

import random

import pytest

from tensorrt_llm_dwdp.prefetch import DwdpProtocolError, LayerCopyPlan, Prefetcher

from conftest import fresh_seed

_C = pytest.importorskip("tensorrt_llm_dwdp._C", reason="the C++ extension is not built")
if not hasattr(_C, "SlotRing"):
    pytest.skip("the C++ extension predates the slot ring: rebuild it", allow_module_level=True)


class PullLog:
    """A Prefetcher engine that only records what it is asked to pull."""

    def __init__(self):
        self.pulls, self.done = [], []

    def issue(self, plan, slot):
        self.pulls.append((plan.layer, slot))

    def wait_fetch(self, slot):
        return None

    def record_compute_done(self, slot):
        self.done.append(slot)

    def synchronize(self):
        pass


def _call(fn):
    """(kind, value): 'ok' and the result, or 'error' and the message."""
    try:
        return "ok", fn()
    except (DwdpProtocolError, _C.ProtocolError) as e:
        return "error", str(e)
    except KeyError:
        return "error", "unknown layer"
    except IndexError:
        return "error", "unknown layer"


def _compare(layers, slots, calls):
    log = PullLog()
    py = Prefetcher(log, [LayerCopyPlan(layer, ()) for layer in range(layers)], slots)
    cc = _C.SlotRing(layers, slots)
    for op, layer in calls:
        before = len(log.pulls)
        if op == "begin":
            pk, pv = _call(py.begin_step)
            ck, cv = _call(cc.begin_step)
            c_pulls = [(p.layer, p.slot) for p in cv] if ck == "ok" else []
        elif op == "acquire":
            pk, pv = _call(lambda: py.acquire(layer))
            ck, cv = _call(lambda: cc.acquire(layer))
            if pk == ck == "ok":
                assert (pv.slot, pv.fresh) == (cv.slot, cv.fresh), (op, layer)
            c_pulls = []
        elif op == "release":
            pk, pv = _call(lambda: py.release(layer))
            ck, cv = _call(lambda: cc.release(layer))
            c_pulls = [(cv.pull.layer, cv.pull.slot)] if ck == "ok" and cv.pull is not None else []
        elif op == "abort":  # Python records compute_done of an acquired, unreleased slot; C++ returns it
            done = len(log.done)
            pk, pv = _call(py.abort_step)
            ck, cv = _call(cc.abort_step)
            assert log.done[done:] == ([] if cv == -1 else [cv]), (op, log.done[done:], cv)
            c_pulls = []
        else:
            pk, pv = _call(py.end_step)
            ck, cv = _call(cc.end_step)
            c_pulls = []
        assert pk == ck, (op, layer, pv, cv)
        if pk == "error":
            assert pv == cv, (op, layer)
        if op == "abort":
            assert cc.in_step is py.in_step is False and cc.next_layer == 0
        assert log.pulls[before:] == c_pulls, (op, layer)
        if pk == "error" and op in ("acquire", "release") and pv == "unknown layer":
            return  # both refused a layer with no slot; their states may legitimately differ past this point


@pytest.mark.parametrize("layers,slots", [(1, 1), (3, 2), (4, 4), (2, 5), (7, 3), (6, 2)])
def test_valid_steps_match(layers, slots):
    calls = []
    for _ in range(4):
        calls.append(("begin", 0))
        for layer in range(layers):
            calls += [("acquire", layer), ("release", layer)]
        calls.append(("end", 0))
    _compare(layers, slots, calls)


def test_random_call_sequences_match():
    rng = random.Random(fresh_seed())
    for _ in range(300):
        layers, slots = rng.randint(1, 6), rng.randint(1, 4)
        calls, nxt = [], 0
        for _ in range(rng.randint(1, 40)):
            r = rng.random()
            if r < 0.7:  # mostly the valid next call, so that sequences go deep
                if nxt == 0 and (not calls or calls[-1][0] == "end"):
                    calls.append(("begin", 0))
                elif nxt < layers:
                    calls += [("acquire", nxt), ("release", nxt)]
                    nxt += 1
                else:
                    calls.append(("end", 0))
                    nxt = 0
            else:  # any call, often out of order
                op = rng.choice(["begin", "acquire", "release", "end", "abort"])
                calls.append((op, rng.randint(0, layers)))
        _compare(layers, slots, calls)


def test_protocol_errors_are_sentences():
    ring = _C.SlotRing(3, 2)
    with pytest.raises(_C.ProtocolError, match="call begin_step first"):
        ring.acquire(0)
    ring.begin_step()
    with pytest.raises(_C.ProtocolError, match="layer 0 is next"):
        ring.acquire(1)
    with pytest.raises(_C.ProtocolError, match="end_step after 0 of 3"):
        ring.end_step()
    with pytest.raises(ValueError):
        _C.SlotRing(0, 2)


def test_abort_mid_layer_names_the_acquired_slot_and_empties_the_ring():
    """A forward that raised between acquire and release: abort returns that slot (its compute_done must be
    recorded) and the next step pulls from empty slots, as Prefetcher.abort_step does."""
    ring = _C.SlotRing(3, 2)
    assert [(p.layer, p.slot) for p in ring.begin_step()] == [(0, 0), (1, 1)]
    ring.acquire(0)
    ring.release(0)
    ring.acquire(1)
    assert ring.abort_step() == 1
    assert ring.abort_step() == -1  # nothing open any more
    assert [(p.layer, p.slot) for p in ring.begin_step()] == [(0, 0), (1, 1)]
