"""The DwdpMoe TensorRT plugin driven through its IPluginV3 interfaces as TensorRT would (tests/cpp/plugin_harness.cpp).

Needs TensorRT headers (TENSORRT_ROOT, .trt/include, or the NGC image's paths) and the plugin library built by
setup.py; skips with the reason otherwise. No TensorRT library is used: the harness plays TensorRT's part.
On a GPU the enqueue runs on a DWDP context whose every expert is pulled through the slot ring (3 layers,
2 slots, 2 steps: slots are refilled behind compute) and is compared with a float64 reference.
"""

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "tensorrt_llm_dwdp" / "libdwdp_trt_plugin.so"
# layer_index, num_experts, hidden_size, intermediate_size, top_k, routing, dtype, context_id
CASES = {
    "bf16-renormalize": [0, 8, 256, 128, 2, 1, 0, 7],
    "bf16-softmax": [3, 6, 64, 32, 3, 0, 0, 0],
    "fp8-precomputed": [1, 4, 256, 256, 2, 2, 1, 2],
}


def _trt_include():
    dirs = [Path(os.environ["TENSORRT_ROOT"]) / "include"] if os.environ.get("TENSORRT_ROOT") else []
    dirs += [ROOT / ".trt" / "include", Path("/usr/include/x86_64-linux-gnu"), Path("/usr/include/aarch64-linux-gnu"),
             Path("/usr/local/tensorrt/include")]
    return next((d for d in dirs if (d / "NvInferRuntime.h").exists()), None)


def _cuda_home():
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env) and (Path(os.environ[env]) / "include" / "cuda_runtime_api.h").exists():
            return Path(os.environ[env])
    nvcc = shutil.which("nvcc")
    home = Path(nvcc).resolve().parent.parent if nvcc else None
    return home if home and (home / "include" / "cuda_runtime_api.h").exists() else Path("/usr/local/cuda")


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    inc = _trt_include()
    if inc is None:
        pytest.skip("no TensorRT headers (set TENSORRT_ROOT or put them in .trt/include)")
    if not PLUGIN.exists():
        pytest.skip("libdwdp_trt_plugin.so is not built (setup.py builds it where TensorRT headers are found)")
    cuda = _cuda_home()
    lib = next((d for d in (cuda / "lib64", cuda / "targets/x86_64-linux/lib") if (d / "libcudart.so").exists()), None)
    out = tmp_path_factory.mktemp("harness") / "libharness.so"
    subprocess.run(["g++", "-std=c++17", "-shared", "-fPIC", "-Wno-deprecated-declarations", f"-I{inc}",
                    f"-I{cuda / 'include'}", str(ROOT / "tests" / "cpp" / "plugin_harness.cpp"), "-o", str(out),
                    f"-L{lib}", "-lcudart", "-ldl", f"-Wl,-rpath,{lib}"], check=True)
    h = ctypes.CDLL(str(out))
    h.harness_error.restype = ctypes.c_char_p
    h.harness_workspace.restype = ctypes.c_int64
    return h


def _fields(values):
    return (ctypes.c_int32 * 8)(*values)


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
