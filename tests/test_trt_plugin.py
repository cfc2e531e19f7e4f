"""The DwdpMoe TensorRT plugin driven through its IPluginV3 interfaces as TensorRT would (tests/cpp/plugin_harness.cpp).

Needs TensorRT headers (TENSORRT_ROOT, .trt/include, or the NGC image's paths) and the plugin library built by
setup.py; skips with the reason otherwise. No TensorRT library is used: the harness plays TensorRT's part.
On a GPU the enqueue runs on a DWDP context whose every expert is pulled through the slot ring (3 layers,
2 slots, 2 steps: slots are refilled behind compute) and is compared with a float64 reference.
"""

import ctypes

import pytest

import trt_harness
from trt_harness import PLUGIN, fields as _fields

# layer_index, num_experts, hidden_size, intermediate_size, top_k, routing, dtype, context_id
CASES = {
    "bf16-renormalize": [0, 8, 256, 128, 2, 1, 0, 7],
    "bf16-softmax": [3, 6, 64, 32, 3, 0, 0, 0],
    "fp8-precomputed": [1, 4, 256, 256, 2, 2, 1, 2],
}


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    why = trt_harness.missing()
    if why:
        pytest.skip(why)
    return trt_harness.load(trt_harness.build(tmp_path_factory.mktemp("harness") / "libharness.so"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_interfaces(harness, case):
    rc = harness.harness_interface_checks(str(PLUGIN).encode(), _fields(CASES[case]), ctypes.c_int64(37))
    assert rc == 0, harness.harness_error().decode()


@pytest.mark.gpu
@pytest.mark.parametrize("case", sorted(CASES))
def test_workspace_grows_with_tokens(harness, case):
    small = harness.harness_workspace(str(PLUGIN).encode(), _fields(CASES[case]), ctypes.c_int64(16))
    large = harness.harness_workspace(str(PLUGIN).encode(), _fields(CASES[case]), ctypes.c_int64(4096))
    assert 0 < small < large


def test_enqueue_without_context_fails_cleanly(harness):
    values = list(CASES["bf16-renormalize"])
    values[7] = 123457  # no context registered under this id
    rc = harness.harness_enqueue(str(PLUGIN).encode(), _fields(values), ctypes.c_int64(4), None, None, None, None,
                                 None)
    assert rc != 0


@pytest.mark.gpu
@pytest.mark.parametrize("routing", [0, 1, 2])
def test_enqueue_matches_float64_reference_bf16(harness, routing):
    import torch

    from tensorrt_llm_dwdp import _C
    from conftest import fresh_seed

    g = torch.Generator().manual_seed(fresh_seed())
    L, D, E, H, I, K, T, ctx_id = 3, 2, 8, 256, 128, 2, 93, 41
    dev = torch.device("cuda")
    w13 = [(torch.randn(E, 2 * I, H, generator=g) / H ** 0.5).to(torch.bfloat16) for _ in range(L)]
    w2 = [(torch.randn(E, H, I, generator=g) / I ** 0.5).to(torch.bfloat16) for _ in range(L)]
    n13, n2 = E * 2 * I * H, E * H * I
    # One allocation per slot: [w13 | w2]. Each layer's "peer" copy is pulled whole into the slot it gets.
    slots = [torch.empty(n13 + n2, dtype=torch.bfloat16, device=dev) for _ in range(D)]
    peers = [torch.cat([w13[l].flatten(), w2[l].flatten()]).to(dev) for l in range(L)]
    views = [_C.ExpertPointers(s.data_ptr(), s.data_ptr() + n13 * 2, 0, 0, 2 * I * H, H * I, 0, 0)
             for _ in range(L) for s in slots]
    slices = [[(peers[l].data_ptr(), 0, (n13 + n2) * 2)] for l in range(L)]
    ctx = _C.DwdpContext(E, D, views, slices, [s.data_ptr() for s in slots], 0, 1)
    _C.register_context(ctx_id, ctx)
    stream = torch.cuda.Stream()
    try:
        for step in range(2):
            for layer in range(L):
                x = torch.randn(T, H, generator=g).to(torch.bfloat16)
                logits = torch.randn(T, E, generator=g)
                vals, ids = torch.topk(logits, K, dim=-1)
                weights = torch.softmax(vals, -1) if routing != 0 else torch.softmax(logits, -1).gather(1, ids)
                if routing == 2:
                    ids[0, 1] = E  # "no expert" contributes nothing
                    weights = torch.rand(T, K, generator=g)
                ref = torch.zeros(T, H, dtype=torch.float64)
                for t in range(T):
                    for j in range(K):
                        e = int(ids[t, j])
                        if e == E:
                            continue
                        w = w13[layer][e].double()
                        h = w @ x[t].double()
                        act = torch.nn.functional.silu(h[:I]) * h[I:]
                        ref[t] += weights[t, j].double() * (w2[layer][e].double() @ act)
                xd, out = x.to(dev), torch.empty(T, H, dtype=torch.bfloat16, device=dev)
                if routing == 2:
                    ra, rb = ids.to(torch.int32).to(dev), weights.to(dev)
                else:
                    ra, rb = logits.to(dev), None
                values = [layer, E, H, I, K, routing, 0, ctx_id]
                rc = harness.harness_enqueue(str(PLUGIN).encode(), _fields(values), ctypes.c_int64(T),
                                             ctypes.c_void_p(xd.data_ptr()), ctypes.c_void_p(ra.data_ptr()),
                                             ctypes.c_void_p(rb.data_ptr() if rb is not None else 0),
                                             ctypes.c_void_p(out.data_ptr()), ctypes.c_void_p(stream.cuda_stream))
                assert rc == 0, f"enqueue failed at step {step} layer {layer}"
                err = (out.double().cpu() - ref).abs().max() / ref.abs().max()
                assert err < 2e-2, f"step {step} layer {layer}: relative error {err:.3g}"
        # begin_step pulls layers 0..D-1 once; every release refills its slot (L > D): D + 2 * L pulls.
        assert ctx.pulls_issued == D + 2 * L
    finally:
        ctx.synchronize()
        _C.unregister_context(ctx_id)


@pytest.mark.gpu
@pytest.mark.parametrize("ranks", [2, 4])
@pytest.mark.parametrize("backend", ["cuda_vmm", "cuda_ipc"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float8_e4m3fn"])
def test_plugin_on_a_context_from_real_shards(tmp_path, ranks, backend, dtype):
    """2 and 4 processes sharing a GPU: DwdpHooks over real shards -> register_plugin_context -> DwdpMoe enqueued
    through the IPluginV3 calls for every layer of 3 steps (each routing mode), against float64 (mpi_trt_plugin.py)."""
    import os
    import subprocess

    from conftest import fresh_seed
    from tensorrt_llm_dwdp.commands.mpirun import clean_launch_env, mpirun_command

    why = trt_harness.missing()
    if why:
        pytest.skip(why)
    so = trt_harness.build(tmp_path / "libharness.so")
    root = str(trt_harness.ROOT)
    extra = {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH"))
                                                                    if p)}
    cmd = mpirun_command(ranks, [os.path.join(root, "tests", "mpi_trt_plugin.py"), str(so), backend, dtype,
                                 str(fresh_seed())], extra)
    proc = subprocess.run(cmd, env=dict(clean_launch_env(dict(os.environ)), **extra), capture_output=True, text=True,
                          timeout=300, cwd=root)
    assert proc.returncode == 0 and "PASS" in proc.stdout, proc.stdout + proc.stderr


def test_plugin_context_refuses_cpu_hooks_with_a_sentence():
    """The plugin reads CUDA memory: hooks over CPU shared memory are refused before anything is registered."""
    import torch
    from mpi4py import MPI

    from conftest import fresh_seed
    from tensorrt_llm_dwdp import DwdpConfig, DwdpConfigError, DwdpHooks, MoeShape
    from tensorrt_llm_dwdp.integrations.trt_engine.context import register_plugin_context

    g = torch.Generator().manual_seed(fresh_seed())
    w = {"w13": torch.randn(4, 32, 16, generator=g), "w2": torch.randn(4, 16, 16, generator=g)}
    cfg = DwdpConfig(group_size=1, num_experts=4, weight_dtype="float32", memory_backend="cpu_shm")
    with DwdpHooks.setup(cfg, MoeShape(2, 16, 16, 4), lambda l, ex: {k: v[list(ex)] for k, v in w.items()},
                         comm=MPI.COMM_SELF) as hooks:
        with pytest.raises(DwdpConfigError, match="memory_backend=.cpu_shm.*cuda_vmm"):
            register_plugin_context(hooks, 3)
        hooks.begin_step()  # the Python prefetcher still owns the slots
        for layer in range(2):
            assert torch.equal(hooks.layer_weights(layer).w2, w["w2"])
            hooks.layer_done(layer)
        hooks.end_step()


@pytest.mark.gpu
def test_enqueue_under_cuda_graph_capture_is_refused_with_the_option_that_turns_graphs_off(harness):
    """ModelRunnerCpp's cuda_graph_mode captures enqueue; a replay would repeat the capture's slots and pulls."""
    import torch

    stream = torch.cuda.Stream()
    rc = harness.harness_enqueue_captured(str(PLUGIN).encode(), _fields(CASES["bf16-renormalize"]), ctypes.c_int64(4),
                                          ctypes.c_void_p(stream.cuda_stream))
    msg = harness.harness_error().decode()
    assert rc != 0 and "CUDA graph" in msg and "cuda_graph_mode" in msg, msg
    assert "layer 0" in msg  # which layer refused
