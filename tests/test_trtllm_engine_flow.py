"""Engine-flow registration on stand-ins of TensorRT-LLM's MixtureOfExperts (built through its own forward) and
TensorRT's Python API."""

import argparse
from types import SimpleNamespace

import pytest

from tensorrt_llm_dwdp.config import DwdpConfigError
from tensorrt_llm_dwdp.shard import MoeShape
from tensorrt_llm_dwdp.integrations.trt_engine import build as ef
from trtllm_engine_fakes import BaseWorker, FakeNetwork, FakeTrt, MixtureOfExperts, SideStreamIDType


def _patched(trt, nets):
    cls = type("MoE", (MixtureOfExperts,), {})
    ef.patch_moe_class(cls, ef.EngineFlowOptions(group_size=4, context_id=5), trt=trt,
                       network_of=lambda m: nets[m.net])
    return cls


def test_each_layer_emits_the_plugin_in_build_order():
    trt, nets = FakeTrt(), {0: FakeNetwork(), 1: FakeNetwork()}
    cls = _patched(trt, nets)
    layers = [cls(num_experts=8, top_k=2, mode=m) for m in (1, 0, 4)]
    for m in layers:
        m.net = 0
        assert m.forward("x")[0] == "out"  # upstream's forward routes, then calls forward_experts
    other = cls()
    other.net = 1  # a second engine built in the same process numbers its layers from 0 again
    other.forward("x")
    got = [{n: v for n, v, _ in fields} for _, fields, _ in trt.created]
    assert [g["layer_index"] for g in got] == [0, 1, 2, 0]
    # routing stays TensorRT-LLM's (any normalization mode): the plugin takes its ids and scales
    assert all(g["routing"] == int(ef.Routing.PRECOMPUTED) for g in got)
    assert all(g["context_id"] == 5 and g["num_experts"] == 8 and g["top_k"] == 2 and g["hidden_size"] == 256
               and g["intermediate_size"] == 128 and g["dtype"] == 0 for g in got)
    assert [inputs for inputs, _ in nets[0].layers] == [
        ["x", f"ids({m})", f"scales({m})"] for m in ("RENORMALIZE", "NONE", "DEVICE_LIMITED_RENORM")]


def test_unsupported_models_are_refused_with_a_sentence():
    trt, nets = FakeTrt(), {0: FakeNetwork()}
    cls = _patched(trt, nets)
    ep = cls(ep=2)
    ep.net = 0
    with pytest.raises(DwdpConfigError, match="moe_ep_size"):
        ep.forward("x")
    for act in ("silu", "gelu"):  # silu is a non-gated expert upstream (fc out = I), not SwiGLU
        m = cls(hidden_act=act)
        m.net = 0
        with pytest.raises(DwdpConfigError, match=f"hidden_act='{act}'"):
            m.forward("x")
    assert not trt.created


def test_a_side_stream_and_lora_are_refused():
    trt, nets = FakeTrt(), {0: FakeNetwork()}
    m = _patched(trt, nets)()
    m.net = 0
    with pytest.raises(DwdpConfigError, match="side stream"):
        m.forward("x", side_stream_id=SideStreamIDType.moe)
    with pytest.raises(DwdpConfigError, match="LoRA"):
        m.forward("x", lora_layer_params="lora")
    m.static_routing = True
    with pytest.raises(DwdpConfigError, match="statically"):
        m.forward("x", static_routing_input="ids")
    assert not trt.created


def test_missing_plugin_library_is_named():
    trt, nets = FakeTrt(registered=False), {0: FakeNetwork()}
    m = _patched(trt, nets)()
    m.net = 0
    with pytest.raises(RuntimeError, match="libdwdp_trt_plugin.so"):
        m.forward("x")


def test_build_flag():
    parser = argparse.ArgumentParser()
    ef.add_build_flag(parser)
    assert ef.options_from_args(parser.parse_args([])) is None
    assert ef.options_from_args(parser.parse_args(["--dwdp_group_size", "4"])).group_size == 4
    with pytest.raises(DwdpConfigError, match="--dwdp_group_size=-2"):
        ef.options_from_args(parser.parse_args(["--dwdp_group_size", "-2"]))


# ---- trtllm-build and the engine runners (tensorrt_llm.commands.build, tensorrt_llm.runtime) -------------------

def _build_module():
    """tensorrt_llm.commands.build's shape: parse_arguments() returns the parser main() parses."""
    def parse_arguments():
        p = argparse.ArgumentParser()
        p.add_argument("--checkpoint_dir", default=None)
        p.add_argument("--output_dir", default="engine_outputs")
        p.add_argument("--workers", type=int, default=1)
        return p
    return SimpleNamespace(parse_arguments=parse_arguments)


def test_build_command_gets_the_flag_and_switches_the_layer_on(tmp_path):
    import json

    module, loaded = _build_module(), []
    cls = type("MoE", (MixtureOfExperts,), {})
    ef.patch_build_command(module, load_plugin=loaded.append, moe_class=cls)
    ef.patch_build_command(module, load_plugin=loaded.append, moe_class=cls)  # idempotent
    out = tmp_path / "engine"
    plain = module.parse_arguments().parse_args(["--output_dir", str(out)])
    assert plain.dwdp_group_size == 0 and not loaded and not hasattr(cls.forward_experts, "_dwdp_wrapped")
    assert not (out / ef.ENGINE_MARKER).exists()
    args = module.parse_arguments().parse_args(["--dwdp_group_size", "4", "--output_dir", str(out),
                                                "--checkpoint_dir", str(tmp_path / "ckpt")])
    assert args.dwdp_group_size == 4 and loaded == [ef.plugin_library_path()]
    assert cls.forward_experts._dwdp_wrapped
    marker = json.loads((out / ef.ENGINE_MARKER).read_text())
    assert marker == {"group_size": 4, "context_id": 0, "dtype": "BF16", "checkpoint_dir": str(tmp_path / "ckpt")}
    with pytest.raises(DwdpConfigError, match="--workers=3"):
        module.parse_arguments().parse_args(["--dwdp_group_size", "2", "--workers", "3"])


class ModelRunner:
    """tensorrt_llm.runtime.ModelRunner's entry: a classmethod that deserialises the engine."""

    opened = []

    @classmethod
    def from_dir(cls, engine_dir, *, rank=0, **kwargs):
        cls.opened.append((str(engine_dir), rank))
        return cls()


def test_runner_sets_the_context_up_before_deserialising(tmp_path):
    from tensorrt_llm_dwdp.integrations.trt_engine import load as er

    events = []
    runner = type("Runner", (ModelRunner,), {"opened": events})
    er.patch_runner_class(runner, setup=lambda m: events.append(("setup", m)))
    er.patch_runner_class(runner, setup=lambda m: events.append(("twice", m)))  # idempotent
    plain = tmp_path / "plain"
    plain.mkdir()
    assert isinstance(runner.from_dir(str(plain), rank=1), runner)
    assert events == [(str(plain), 1)]
    dwdp = tmp_path / "dwdp"
    dwdp.mkdir()
    (dwdp / ef.ENGINE_MARKER).write_text('{"group_size": 2, "context_id": 9, "dtype": "FP8_BLOCK", '
                                         '"checkpoint_dir": "/ckpt"}')
    runner.from_dir(str(dwdp), rank=0)
    assert events[1] == ("setup", er.EngineMarker(str(dwdp), 2, 9, ef.ExpertDtype.FP8_BLOCK, "/ckpt"))
    assert events[2] == (str(dwdp), 0)  # the engine is opened after the context exists
    with pytest.raises(DwdpConfigError, match="cuda_graph_mode=True") as e:  # ModelRunnerCpp's CUDA-graph mode
        runner.from_dir(str(dwdp), rank=0, cuda_graph_mode=True)
    assert "cuda_graph_mode=False" in str(e.value) and len(events) == 3  # before any setup
    runner.from_dir(str(plain), rank=0, cuda_graph_mode=True)  # not a DWDP engine: TensorRT-LLM's business


def test_llm_api_workers_set_the_context_up_before_the_executor_opens_the_engine(tmp_path):
    """LLM(backend="tensorrt") and trtllm-serve open engines in BaseWorker.setup_engine, not through the runners."""
    from tensorrt_llm_dwdp.integrations.trt_engine import load as er

    events = []
    worker = type("Worker", (BaseWorker,), {"setup_engine": BaseWorker.setup_engine})
    er.patch_worker_module(SimpleNamespace(BaseWorker=worker))  # what the activation hook does on import
    assert worker.setup_engine._dwdp_wrapped
    plain, dwdp = tmp_path / "plain", tmp_path / "dwdp"
    plain.mkdir()
    dwdp.mkdir()
    (dwdp / ef.ENGINE_MARKER).write_text('{"group_size": 2, "context_id": 3, "dtype": "BF16", "checkpoint_dir": "/c"}')
    recorded = type("Recorded", (BaseWorker,), {})
    er.patch_worker_class(recorded, setup=lambda m: events.append(("setup", m)))
    er.patch_worker_class(recorded, setup=lambda m: events.append(("twice", m)))  # idempotent
    recorded(str(plain), opened=events).setup_engine()
    assert events == [("executor", str(plain))]
    recorded([str(plain), dwdp], rank=1, opened=events).setup_engine()  # one engine per rank, a PathLike
    assert events[1] == ("setup", er.EngineMarker(str(dwdp), 2, 3, ef.ExpertDtype.BF16, "/c"))
    assert events[2] == ("executor", dwdp)  # the executor is built after the context exists
    recorded(SimpleNamespace(engine=b"serialised"), opened=events).setup_engine()  # in memory: no marker to read
    assert len(events) == 4 and events[3][0] == "executor"


def test_checkpoint_loader_reads_experts_gate_rows_first(tmp_path):
    import torch
    from safetensors.torch import save_file

    from conftest import fresh_seed
    from tensorrt_llm_dwdp.integrations.trt_engine import load as er

    g = torch.Generator().manual_seed(fresh_seed())
    E, H, I = 6, 32, 16
    gate, up, w2 = torch.randn(E, I, H, generator=g), torch.randn(E, I, H, generator=g), torch.randn(E, H, I, generator=g)
    save_file({"transformer.layers.1.mlp.fc.weight": torch.cat([up, gate], 1),  # TensorRT-LLM's w3 then w1
               "transformer.layers.1.mlp.proj.weight": w2}, str(tmp_path / "rank0.safetensors"))
    shape = MoeShape(2, H, I, E)
    got = er.checkpoint_loader(str(tmp_path), shape)(1, [4, 1])
    assert torch.equal(got["w13"], torch.cat([gate[[4, 1]], up[[4, 1]]], 1)) and torch.equal(got["w2"], w2[[4, 1]])
    with pytest.raises(DwdpConfigError, match="rank0.safetensors"):
        er.checkpoint_loader(str(tmp_path / "none"), shape)
    # converted with expert parallelism: rank0.safetensors holds only the first rank's 3 experts
    save_file({"transformer.layers.1.mlp.fc.weight": torch.cat([up, gate], 1)[:3],
               "transformer.layers.1.mlp.proj.weight": w2[:3]}, str(tmp_path / "rank0.safetensors"))
    with pytest.raises(DwdpConfigError, match="moe_ep_size=1"):
        er.checkpoint_loader(str(tmp_path), shape)(1, [1])


def test_moe_shape_from_the_engine_config(tmp_path):
    import json

    from tensorrt_llm_dwdp.integrations.trt_engine import load as er

    cfg = {"pretrained_config": {"num_hidden_layers": 4, "hidden_size": 256, "intermediate_size": 512,
                                 "moe": {"num_experts": 8, "top_k": 2}}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    s = er.moe_shape_of(str(tmp_path))
    assert (s.num_layers, s.hidden_size, s.intermediate_size, s.num_experts) == (4, 256, 512, 8)
    cfg["pretrained_config"]["moe"] = {"num_experts": 0}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DwdpConfigError, match="no MoE experts"):
        er.moe_shape_of(str(tmp_path))
