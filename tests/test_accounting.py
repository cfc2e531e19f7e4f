"""Accounting of the runtime's benchmark: what each mode is charged, balancing, chunked prefill, caveats."""

import random
from types import SimpleNamespace

import pytest
import torch

from conftest import fresh_seed
from tensorrt_llm_dwdp.bench import report
from tensorrt_llm_dwdp.runtime.executor import ContextExecutor
from tensorrt_llm_dwdp.runtime.schedule import least_loaded
from tensorrt_llm_dwdp.workloads.requests import Request, queue, take_batch


def _it(tokens, start, end, wait=0.0, comm=0.0):
    return {"tokens": tokens, "start_s": start, "end_s": end, "wait_s": wait, "comm_s": comm}


def test_an_idle_rank_is_not_counted_busy():
    """Rank 1 serves 100 tokens in 1 s, then idles in lockstep for 3 s of zero-token forwards (with their
    collectives): neither the idle time nor its waiting is charged, only rank 0's and rank 1's real work."""
    rng = random.Random(fresh_seed())
    d0, d1 = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0)
    ranks = [{"iterations": [_it(300, 0.0, d0, 0.1, 0.05), _it(200, d0, 2 * d0, 0.2, 0.1)], "requests": []},
             {"iterations": [_it(100, 0.0, d1, 0.3, 0.2)] + [_it(0, d1 + i, d1 + i + 1, 0.9, 0.9) for i in range(3)],
              "requests": []}]
    s = report.summarize(ranks)
    busy = 2 * d0 + d1
    assert s["busy_tokens_per_s_per_gpu"] == pytest.approx(600 / busy)
    # the headline counts the timed window's wall time on every rank: first token step to last one's end
    assert s["tokens_per_s_per_gpu"] == pytest.approx(600 / (2 * max(2 * d0, d1)))
    assert s["wait_fraction"] == pytest.approx(0.6 / busy)
    assert s["comm_fraction"] == pytest.approx(0.35 / busy)
    assert s["iterations"] == 3 and s["idle_iterations"] == 3


class _Dist:
    """Records the collectives the executor issues itself (the step's all-reduce)."""

    def __init__(self, log):
        self.log = log
        self.ReduceOp = SimpleNamespace(MAX="max")

    def get_backend(self):
        return "gloo"

    def all_reduce(self, t, op=None):
        self.log.append("all_reduce")


class _Clock:
    def __init__(self):
        self.host_s, self.taken = 0.0, 0

    def run(self, fn, *a, **k):
        return fn(*a, **k)

    def take_device_s(self):
        self.taken += 1
        return 0.0


def test_dep_warm_up_runs_the_steps_collectives_so_their_first_use_is_untimed(monkeypatch):
    """Every collective a timed DEP step issues (its all-reduce, then the forward's exchanges) runs in the
    warm-up, so NCCL/gloo initialisation falls before the timed window; the clock is read after it."""
    import torch.distributed as dist
    log = []
    fake = _Dist(log)
    monkeypatch.setattr(dist, "get_backend", fake.get_backend)
    monkeypatch.setattr(dist, "all_reduce", fake.all_reduce)
    monkeypatch.setattr(dist, "ReduceOp", fake.ReduceOp)

    class Model:
        c = SimpleNamespace(vocab=50)

        def __call__(self, ids, lens, positions=None):
            log.append(("forward", ids.numel()))

    clock = _Clock()
    ex = ContextExecutor(Model(), "dep", 64, torch.device("cpu"), seed=1, clock=clock)
    steps = random.Random(fresh_seed()).randint(1, 3)
    ex.warm_up([Request(0, 40), Request(1, 30)], steps)
    assert log == ["all_reduce", ("forward", 40)] * steps
    assert clock.taken == 1  # warm-up collectives are dropped from the comm clock
    log.clear()
    ex.warm_up([], 1)  # an idle rank joins the same collectives with a zero-token forward
    assert log == ["all_reduce", ("forward", 0)]


def test_dep_needs_a_clock():
    with pytest.raises(ValueError, match="CommClock"):
        ContextExecutor(SimpleNamespace(), "dep", 8, torch.device("cpu"), seed=0)


def test_least_loaded_assignment_balances_tokens_and_keeps_every_request():
    rng = random.Random(fresh_seed())
    world = rng.randint(2, 6)
    reqs = [Request(i, rng.randint(1, 500), 0.0) for i in range(rng.randint(world, 60))]
    split = least_loaded(reqs, world)
    assert sorted(q.id for lst in split for q in lst) == [q.id for q in reqs]
    loads = [sum(q.isl for q in lst) for lst in split]
    # greedy largest-first to the least-loaded rank: no rank exceeds another by more than one request
    assert max(loads) - min(loads) <= max(q.isl for q in reqs)
    assert split == least_loaded(list(reversed(reqs)), world)  # every rank computes the same split
    # arrival order is kept within a rank; later arrivals go where the load is least at their time
    timed = [Request(i, rng.randint(1, 500), i * 0.1) for i in range(20)]
    for lst in least_loaded(timed, world):
        assert [q.arrival_s for q in lst] == sorted(q.arrival_s for q in lst)


def test_chunked_prefill_splits_the_request_that_does_not_fit():
    rng = random.Random(fresh_seed())
    reqs = [Request(i, rng.randint(1, 300)) for i in range(12)]
    mnt = rng.randint(50, 200)
    waiting = queue(reqs)
    served = {q.id: 0 for q in reqs}
    while waiting:
        batch = take_batch(waiting, mnt, chunked=True)
        assert 0 < sum(c.n for c in batch) <= mnt
        assert sum(c.n for c in batch) == mnt or not waiting  # a chunked batch is full unless the queue ran dry
        for c in batch:
            assert c.offset == served[c.request.id]  # chunks come in order, back to back
            served[c.request.id] += c.n
    assert served == {q.id: q.isl for q in reqs}
    # without chunking, a request longer than the room waits for the next batch
    waiting = queue([Request(0, 30), Request(1, 50)])
    assert [c.request.id for c in take_batch(waiting, 60, chunked=False)] == [0]


def test_executor_refuses_an_overlong_request_unless_chunked():
    ex = ContextExecutor(SimpleNamespace(c=SimpleNamespace(vocab=10)), "local", 16, torch.device("cpu"), seed=0)
    with pytest.raises(ValueError, match="chunked-prefill"):
        ex.run([Request(0, 17)], 0.0, 0)


def _result(tps, device="cpu", pulled=None):
    modes = {m: {"tokens_per_s_per_gpu": v} for m, v in tps.items()}
    if "dwdp" in modes:
        steps = pulled if pulled is not None else [1]
        modes["dwdp"].update(iterations=len(steps), bytes_pulled=sum(steps),
                             steps_without_pull=sum(1 for b in steps if not b))
    return {"config": {"isl": "128", "device": device}, "modes": modes}


def test_like_for_like_warning_and_cpu_caveat():
    base = random.Random(fresh_seed()).uniform(100, 1000)
    fair = _result({"local": base, "dwdp": 1.09 * base, "dep": 0.8 * base}, device="cuda:0")
    assert report.like_for_like_warnings(fair) == [] and report.caveats([fair]) == []
    unfair = _result({"local": base, "dwdp": 1.2 * base, "dep": 1.15 * base})
    warnings = report.like_for_like_warnings(unfair)
    assert len(warnings) == 2 and "dwdp serves 1.20x" in warnings[0] and "dep serves 1.15x" in warnings[1]
    cav = report.caveats([unfair])
    assert cav[0] == report.CPU_CAVEAT and len(cav) == 3


def test_like_for_like_warns_when_a_sharded_mode_is_far_slower_than_local():
    base = random.Random(fresh_seed()).uniform(100, 1000)
    slow = _result({"local": base, "dwdp": 0.55 * base, "dep": 0.4 * base}, device="cuda:0")
    warnings = report.like_for_like_warnings(slow)
    assert len(warnings) == 1 and "dep serves 0.40x" in warnings[0] and "under 0.50x" in warnings[0]


def test_a_dwdp_run_that_pulled_nothing_is_told():
    base = random.Random(fresh_seed()).uniform(100, 1000)
    none = _result({"local": base, "dwdp": base}, device="cuda:0", pulled=[0, 0, 0])
    (w,) = report.like_for_like_warnings(none)
    assert "dwdp pulled no bytes" in w and "--depth" in w
    some = _result({"local": base, "dwdp": base}, device="cuda:0", pulled=[4096, 0, 4096])
    (w,) = report.like_for_like_warnings(some)
    assert "nothing in 1 of 3 steps" in w
    assert report.like_for_like_warnings(_result({"local": base, "dwdp": base}, "cuda:0", [8, 8])) == []


def test_summary_counts_pulled_bytes_per_step_and_the_table_shows_them():
    rng = random.Random(fresh_seed())
    pulls = [rng.randint(1, 1 << 24) for _ in range(4)]
    ranks = [{"iterations": [dict(_it(10, i, i + 1.0), bytes_pulled=b) for i, b in enumerate(pulls[:2])],
              "requests": []},
             {"iterations": [dict(_it(10, i, i + 1.0), bytes_pulled=b) for i, b in enumerate(pulls[2:])],
              "requests": []}]
    s = report.summarize(ranks)
    assert s["bytes_pulled_per_step"] == pytest.approx(sum(pulls) / 4) and s["steps_without_pull"] == 0
    res = {"config": {"isl": "128", "device": "cpu"}, "speedup_dwdp_over_dep": float("nan"),
           "modes": {"dwdp": s, "local": dict(s)}}
    rows = report.table([res]).splitlines()
    assert "MiB/step" in rows[0] and "busy TPS" in rows[0]
    assert f"{sum(pulls) / 4 / 2**20:.2f}" in rows[1] and rows[1].split()[1] == "dwdp"


def test_hooks_metrics_is_a_growing_view_not_a_copy():
    MPI = pytest.importorskip("mpi4py.MPI")
    from tensorrt_llm_dwdp import DwdpConfig, DwdpHooks, MoeShape
    from tensorrt_llm_dwdp.verify.model import ToyMoeModel
    m = ToyMoeModel(2, 32, 16, 4, 2, "softmax", 1, 1, "float32", fresh_seed())
    cfg = DwdpConfig(group_size=1, num_experts=4, weight_dtype="float32", memory_backend="cpu_shm")
    with DwdpHooks.setup(cfg, MoeShape(2, 32, 16, 4), m.load_experts, comm=MPI.COMM_SELF) as hooks:
        view = hooks.metrics()
        for step in range(3):
            hooks.begin_step()
            for lid in (0, 1):
                hooks.layer_weights(lid)
                hooks.layer_done(lid)
            hooks.end_step()
            assert hooks.last_step().step == step and len(hooks.metrics()) == step + 1
        assert len(view) == 3 and [s.step for s in view] == [0, 1, 2]  # the first view grew: nothing copied
        with pytest.raises(TypeError):
            view[0] = None  # read-only


def test_dwdp_comm_counts_the_pull_the_end_of_step_sync_waits_for(monkeypatch):
    """On a GPU the step ends with the compute stream synchronised first, then the device: what the second
    wait takes is a pull still in flight, and DWDP's comm is charged with it besides its in-step stalls."""
    import time
    rng = random.Random(fresh_seed())
    tail, stall, pulled = rng.uniform(0.02, 0.05), rng.uniform(0.001, 0.01), rng.randint(1, 1 << 20)
    calls = []

    class Stream:
        def synchronize(self):
            calls.append("compute")

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: (calls.append("device"), time.sleep(tail)))
    hooks = SimpleNamespace(last_step=lambda: SimpleNamespace(fetch_wait_s=stall, bytes_pulled=pulled))
    ex = ContextExecutor(SimpleNamespace(c=SimpleNamespace(vocab=10)), "dwdp", 8, torch.device("cuda"), seed=0,
                         hooks=hooks)
    waited = ex._sync_step()
    assert calls == ["compute", "device"] and tail <= waited < tail + 0.05

    def forward(batch):
        ex._tail_s = waited
        return 5

    monkeypatch.setattr(ex, "_forward", forward)
    rec = ex._iterate(0, [], 0.0, 0.0, 0.0)
    assert rec.comm_s == pytest.approx(stall + waited) and rec.wait_s == stall
    assert rec.bytes_pulled == rec.bytes_moved == rec.bytes_min == pulled
