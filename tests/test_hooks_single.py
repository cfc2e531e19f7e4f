"""The hook API on one rank (group of one) and its setup-time errors."""

import glob

import pytest
import torch

from conftest import fresh_seed
from tensorrt_llm_dwdp import DwdpConfig, DwdpConfigError, DwdpHooks, MoeShape
from tensorrt_llm_dwdp.memory import get_backend
from tensorrt_llm_dwdp.prefetch import DwdpProtocolError
from tensorrt_llm_dwdp.verify.model import ToyMoeModel

MPI = pytest.importorskip("mpi4py.MPI")


def _model(layers=3, experts=8, seed=None):
    return ToyMoeModel(layers, 32, 16, experts, 2, "softmax", 1, 1, "float32", fresh_seed() if seed is None else seed)


def test_layer_ids_composite_and_metrics_on_one_rank():
    m = _model()
    cfg = DwdpConfig(group_size=1, num_experts=8, weight_dtype="float32", memory_backend="cpu_shm")
    shape = MoeShape(3, 32, 16, 8, layer_ids=(3, 5, 7))
    with DwdpHooks.setup(cfg, shape, m.load_experts, comm=MPI.COMM_SELF) as hooks:
        hooks.begin_step()
        for lid in (3, 5, 7):
            w = hooks.layer_weights(lid)
            layer = (3, 5, 7).index(lid)
            assert w.w13.shape == (8, 32, 32) and w.w2.shape == (8, 32, 16) and w.w13_scale is None
            assert torch.equal(w.w13, m.w13[layer]) and torch.equal(w.w2, m.w2[layer])  # bit for bit
            hooks.layer_done(lid)
        hooks.end_step()
        with pytest.raises(ValueError, match="not a DWDP MoE layer"):
            hooks.layer_weights(4)
        steps = hooks.metrics()
        assert len(steps) == 1 and [l.layer_id for l in steps[0].layers] == [3, 5, 7]
        assert steps[0].bytes_pulled == 0  # a group of one pulls nothing


def test_hooks_reject_out_of_order_layers():
    m = _model()
    cfg = DwdpConfig(group_size=1, num_experts=8, weight_dtype="float32", memory_backend="cpu_shm")
    with DwdpHooks.setup(cfg, MoeShape(3, 32, 16, 8), m.load_experts, comm=MPI.COMM_SELF) as hooks:
        hooks.begin_step()
        with pytest.raises(DwdpProtocolError, match="in order"):
            hooks.layer_weights(1)


def test_shape_mismatch_is_reported():
    m = _model()
    cfg = DwdpConfig(group_size=1, num_experts=8, weight_dtype="float32", memory_backend="cpu_shm")
    with pytest.raises(DwdpConfigError, match="shard expects"):
        DwdpHooks.setup(cfg, MoeShape(3, 32, 24, 8), m.load_experts, comm=MPI.COMM_SELF)
    with pytest.raises(DwdpConfigError, match="num_experts=8"):
        DwdpHooks.setup(DwdpConfig(group_size=1, num_experts=6), MoeShape(3, 32, 16, 8), m.load_experts,
                        comm=MPI.COMM_SELF)


def test_world_not_divisible_is_reported_before_memory():
    cfg = DwdpConfig(group_size=2, num_experts=8, memory_backend="cpu_shm")
    with pytest.raises(DwdpConfigError, match="does not divide the world of 1"):
        DwdpHooks.setup(cfg, MoeShape(3, 32, 16, 8), _model().load_experts, comm=MPI.COMM_SELF)


def test_buffers_that_cannot_fit_fail_before_allocation():
    free = get_backend("cpu_shm").free_bytes()
    hidden = 4096
    inter = int(free / (8 * 3 * hidden * 4)) + 1024  # one layer of 8 experts exceeds free /dev/shm
    before = set(glob.glob("/dev/shm/dwdp-*"))
    cfg = DwdpConfig(group_size=1, num_experts=8, weight_dtype="float32", memory_backend="cpu_shm")

    def never(*_):
        raise AssertionError("weights must not be loaded when memory does not fit")

    with pytest.raises(DwdpConfigError, match="free"):
        DwdpHooks.setup(cfg, MoeShape(1, hidden, inter, 8), never, comm=MPI.COMM_SELF)
    assert set(glob.glob("/dev/shm/dwdp-*")) == before


def test_shm_names_are_unlinked_after_setup():
    before = set(glob.glob("/dev/shm/dwdp-*"))
    cfg = DwdpConfig(group_size=1, num_experts=8, weight_dtype="float32", memory_backend="cpu_shm")
    with DwdpHooks.setup(cfg, MoeShape(3, 32, 16, 8), _model().load_experts, comm=MPI.COMM_SELF):
        assert set(glob.glob("/dev/shm/dwdp-*")) == before


def test_fp8_shard_carries_block_scales():
    """An FP8 shard holds each expert's e4m3 weights and its 128x128 block scales; the layer's experts
    computed from the shard equal those computed from the loader's tensors."""
    from tensorrt_llm_dwdp.moe import ExpertWeights, expert_compute, ops

    g = torch.Generator().manual_seed(fresh_seed())
    E, H, I, layers = 4, 256, 128, 2
    truth = {}
    for layer in range(layers):
        w13, s13 = ops.quantize_weight_blocks(torch.randn(E, 2 * I, H, generator=g) / 16)
        w2, s2 = ops.quantize_weight_blocks(torch.randn(E, H, I, generator=g) / 11)
        truth[layer] = {"w13": w13, "w2": w2, "w13_scale": s13, "w2_scale": s2}

    def load(layer, experts):
        return {k: v[list(experts)] for k, v in truth[layer].items()}

    cfg = DwdpConfig(group_size=1, num_experts=E, weight_dtype="float8_e4m3fn", memory_backend="cpu_shm")
    x = torch.randn(9, H, generator=g).bfloat16()
    ids = torch.stack([torch.randperm(E, generator=g)[:2] for _ in range(9)])
    wts = torch.rand(9, 2, generator=g)
    with DwdpHooks.setup(cfg, MoeShape(layers, H, I, E), load, comm=MPI.COMM_SELF) as hooks:
        hooks.begin_step()
        for layer in range(layers):
            w = hooks.layer_weights(layer)
            for name, t in truth[layer].items():
                assert torch.equal(getattr(w, name).view(torch.uint8), t.view(torch.uint8)), name
            direct = ExpertWeights.from_tensors(truth[layer])
            assert torch.equal(expert_compute(x, ids, wts, w), expert_compute(x, ids, wts, direct))
            hooks.layer_done(layer)
        hooks.end_step()
    with pytest.raises(DwdpConfigError, match="multiples of 128"):
        DwdpHooks.setup(cfg, MoeShape(layers, 96, I, E), load, comm=MPI.COMM_SELF)


def test_a_lent_slot_ring_refuses_python_pulls_and_comes_back_empty():
    """lend_ring hands the ring to a native driver (the TensorRT plugin): meanwhile every pulling hook call is one
    clear error; return_ring gives the hooks a fresh ring that serves the same weights again."""
    from tensorrt_llm_dwdp.hooks import RingLentError
    m = _model()
    cfg = DwdpConfig(group_size=1, num_experts=8, weight_dtype="float32", memory_backend="cpu_shm")
    with DwdpHooks.setup(cfg, MoeShape(3, 32, 16, 8), m.load_experts, comm=MPI.COMM_SELF) as hooks:
        hooks.begin_step()
        with pytest.raises(RingLentError, match="step open"):
            hooks.lend_ring("a test driver")
        for layer in range(3):
            hooks.layer_weights(layer)
            hooks.layer_done(layer)
        hooks.end_step()
        spec = hooks.lend_ring("a test driver")
        assert hooks.ring_lent and not hooks.in_step and len(spec.slices) == 3
        assert hooks.layer_plan(1).nbytes == sum(s[2] for s in spec.slices[1])
        with pytest.raises(RingLentError, match="a test driver owns the prefetch slots"):
            hooks.begin_step()
        with pytest.raises(RingLentError, match="already lent to a test driver"):
            hooks.lend_ring("another")
        hooks.return_ring()
        assert not hooks.ring_lent
        hooks.begin_step()
        for layer in range(3):
            w = hooks.layer_weights(layer)
            assert torch.equal(w.w13, m.w13[layer])
            hooks.layer_done(layer)
        hooks.end_step()
