"""The adapter against a real TensorRT-LLM: runs where `tensorrt_llm` imports (the container of
docker/Dockerfile.trtllm), skips elsewhere. Checks the interfaces and layouts the adapter relies on, and that
a real CutlassFusedMoE runs its own kernel on DWDP's composite tensors."""

import pytest
import torch

trtllm = pytest.importorskip("tensorrt_llm")

from tensorrt_llm_dwdp.integrations.trtllm import adapter  # noqa: E402
from tensorrt_llm_dwdp.integrations.trtllm.layouts import checkpoint_to_shard, from_shard, to_shard  # noqa: E402
from tensorrt_llm_dwdp.integrations.trtllm.options import parse_section  # noqa: E402

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _uninstall():
    yield
    adapter.uninstall()


def test_interfaces_the_adapter_patches_exist():
    from tensorrt_llm._torch.pyexecutor.model_engine import PyTorchModelEngine
    from tensorrt_llm._utils import mpi_comm
    from tensorrt_llm.llmapi import llm_utils
    from tensorrt_llm.llmapi.llm_args import BaseLlmArgs

    assert callable(PyTorchModelEngine.__init__) and callable(PyTorchModelEngine.forward) and callable(mpi_comm)
    assert callable(llm_utils.update_llm_args_with_extra_dict)
    assert dict(BaseLlmArgs.model_config).get("extra") == "forbid"  # why the dwdp: section must not reach it


def test_interfaces_the_adapter_reads_exist():
    import inspect

    from tensorrt_llm.llmapi import mpi_session
    from tensorrt_llm._torch.modules.fused_moe import CutlassFusedMoE

    # the pool workers get the DWDP variables through this name (MpiPoolSession._start_mpi_pool)
    assert hasattr(mpi_session, "MPIPoolExecutor")
    assert "MPIPoolExecutor" in inspect.getsource(mpi_session.MpiPoolSession._start_mpi_pool)
    params = inspect.signature(CutlassFusedMoE.forward).parameters  # read by name, positional or keyword
    assert list(params)[1:3] == ["x", "router_logits"] and "do_finalize" in params


def test_the_options_file_key_is_dropped_before_llm_args(capsys):
    from tensorrt_llm.llmapi import llm_args, llm_utils

    adapter.install(parse_section({}))  # tensorrt_llm is imported already: patches apply at once
    extra = {"dwdp": {"prefetch_depth": 2}, "max_batch_size": 4}
    got = llm_utils.update_llm_args_with_extra_dict({"model": "m"}, extra)
    assert "dwdp" not in got and got["max_batch_size"] == 4
    assert ("own DWDP" in capsys.readouterr().err) == hasattr(llm_args, "DwdpConfig")  # upstream's DWDP is named


def test_triton_layout_matches_tensorrt_llms_shuffle():
    fused_moe_triton = pytest.importorskip("tensorrt_llm._torch.modules.fused_moe.fused_moe_triton")
    n, h, i = 2, 64, 32
    w1, w3 = torch.randn(n, i, h), torch.randn(n, i, h)
    shuffle = fused_moe_triton.shuffle_weight_for_activation_kernel
    theirs = torch.stack([shuffle(torch.cat([w3[k], w1[k]]).t().contiguous()) for k in range(n)])
    ours = from_shard("triton", {"w13": torch.cat([w1, w3], dim=1), "w2": torch.randn(n, h, i)})["w3_w1_weight"]
    assert torch.equal(ours, theirs)


@gpu
def test_cutlass_module_weights_read_back_as_the_checkpoint():
    from tensorrt_llm._torch.model_config import ModelConfig
    from tensorrt_llm._torch.modules.fused_moe import CutlassFusedMoE, RenormalizeMoeRoutingMethod

    e, h, i = 4, 256, 128
    moe = CutlassFusedMoE(routing_method=RenormalizeMoeRoutingMethod(top_k=2), num_experts=e, hidden_size=h,
                          intermediate_size=i, dtype=torch.bfloat16, model_config=ModelConfig()).cuda()
    shapes = {"w1": (i, h), "w3": (i, h), "w2": (h, i)}
    ckpt = {f"{x}.{w}.weight": torch.randn(*shapes[w], dtype=torch.bfloat16) for x in range(e) for w in shapes}
    moe.load_weights([ckpt])
    ours = to_shard("w3_w1", moe.w3_w1_weight.detach().cpu(), moe.w2_weight.detach().cpu())
    want = checkpoint_to_shard(ckpt, range(e))
    assert torch.equal(ours["w13"], want["w13"]) and torch.equal(ours["w2"], want["w2"])


def _cutlass_moe(e, h, i, layer_idx=0):
    from tensorrt_llm._torch.model_config import ModelConfig
    from tensorrt_llm._torch.modules.fused_moe import CutlassFusedMoE, RenormalizeMoeRoutingMethod

    return CutlassFusedMoE(routing_method=RenormalizeMoeRoutingMethod(top_k=2), num_experts=e, hidden_size=h,
                           intermediate_size=i, dtype=torch.bfloat16, model_config=ModelConfig(),
                           layer_idx=layer_idx).cuda()


@gpu
def test_the_modules_own_kernel_runs_on_the_composite_tensors():
    """One rank (a group of 1): after attach, the module's Parameters are the hooks' composite tensors, its own
    forward (TensorRT-LLM's fused MoE op) runs on them, and it gives what it gave on its own weights."""
    from types import SimpleNamespace

    from mpi4py import MPI

    from conftest import fresh_seed

    e, h, i = 8, 256, 256
    g = torch.Generator().manual_seed(fresh_seed())
    moe = _cutlass_moe(e, h, i)
    shapes = {"w1": (i, h), "w3": (i, h), "w2": (h, i)}
    moe.load_weights([{f"{x}.{w}.weight": (torch.randn(*shapes[w], generator=g) / h ** 0.5).bfloat16()
                       for x in range(e) for w in shapes}])
    x = torch.randn(37, h, generator=g).bfloat16().cuda()
    logits = torch.randn(37, e, generator=g).cuda()
    with torch.no_grad():
        before = moe.forward(x, logits)
    model = torch.nn.ModuleDict({"experts": moe})
    engine = SimpleNamespace(model=model, forward=lambda *a, **k: None)
    hooks = adapter.attach(engine, parse_section({"mode": "dwdp"}), comm=MPI.COMM_SELF)
    assert hooks is not None
    with torch.no_grad():
        after = moe.forward(x, logits)  # a forward outside engine.forward: a step of its own
        hooks.begin_step()
        composite = hooks.layer_weights(0)
        assert moe.w3_w1_weight.data_ptr() == composite.w13.data_ptr()
        assert moe.w2_weight.data_ptr() == composite.w2.data_ptr()
        hooks.layer_done(0)
        hooks.end_step()
    assert torch.allclose(after.float(), before.float(), rtol=1e-2, atol=1e-2), (after - before).abs().max()


def test_the_installed_tensorrt_llm_matches_its_contract():
    """The contract script run on the installed package's own files: against the committed contract of its release
    (1.2.x -> trtllm-1.2.json, anything newer -> trtllm-main.json), every difference printed. The stand-ins the CPU
    tests use are checked against those contracts (tests/test_trtllm_contracts.py)."""
    import json
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root / "tools"))
    import trtllm_contract as tc

    release = "1.2" if trtllm.__version__.startswith("1.2") else "main"
    committed = json.loads((root / "tests" / "contracts" / f"trtllm-{release}.json").read_text())
    installed = tc.read_tree(Path(trtllm.__file__).resolve().parent.parent, release)
    changed = tc.differences(committed, installed)
    assert not changed, f"TensorRT-LLM {trtllm.__version__} differs from trtllm-{release}.json:\n" + "\n".join(changed)
