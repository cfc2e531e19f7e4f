"""Engine-flow registration on fakes shaped like TensorRT-LLM 1.2.x's MixtureOfExperts and TensorRT's Python API."""

import argparse
from types import SimpleNamespace

import pytest

from tensorrt_llm_dwdp.config import DwdpConfigError
from tensorrt_llm_dwdp.integrations.trtllm import engine_flow as ef


class FakeTrt:
    """The slice of TensorRT's Python API that emit_plugin uses; records what was created."""

    class PluginFieldType:
        INT32 = "int32"

    class TensorRTPhase:
        BUILD = "build"

    def __init__(self, registered=True):
        self.created = []
        self.registered = registered

    def PluginField(self, name, data, kind):  # noqa: N802 - TensorRT's spelling
        return (name, int(data[0]), kind)

    def PluginFieldCollection(self, fields):  # noqa: N802
        return list(fields)

    def get_plugin_registry(self):
        trt = self

        class Creator:
            def create_plugin(self, name, fields, phase):
                trt.created.append((name, fields, phase))
                return SimpleNamespace(name=name)

        return SimpleNamespace(get_creator=lambda n, v, ns: Creator() if trt.registered and
                               (n, v, ns) == ("DwdpMoe", "1", "dwdp") else None)


class FakeNetwork:
    def __init__(self):
        self.layers = []

    def add_plugin_v3(self, inputs, shape_inputs, plugin):
        self.layers.append((inputs, plugin))
        return SimpleNamespace(get_output=lambda i: ("out", plugin.name))


class MixtureOfExperts:
    """TensorRT-LLM 1.2.x layers/moe.py attributes the patch reads."""

    def __init__(self, num_experts=8, top_k=2, hidden=256, inter=128, mode=1, ep=1):
        self.num_experts, self.top_k, self.hidden_size, self.expert_inter_size = num_experts, top_k, hidden, inter
        self.hidden_act = "swiglu"
        self.moe_config = SimpleNamespace(normalization_mode=mode)
        self.mapping = SimpleNamespace(moe_tp_size=1, moe_ep_size=ep, has_moe_tp=lambda: False,
                                       has_moe_ep=lambda: ep > 1)

    def forward_experts(self, hidden_states, routing, finished, lora_layer_params, reduce_fusion_params):
        raise RuntimeError("TensorRT-LLM's MoE plugin was emitted")


def _patched(trt, nets):
    cls = type("MoE", (MixtureOfExperts,), {})
    ef.patch_moe_class(cls, ef.EngineFlowOptions(group_size=4, context_id=5), trt=trt,
                       network_of=lambda m: nets[m.net])
    return cls


def test_each_layer_emits_the_plugin_in_build_order():
    trt, nets = FakeTrt(), {0: FakeNetwork(), 1: FakeNetwork()}
    cls = _patched(trt, nets)
    layers = [cls(num_experts=8, top_k=2, mode=m) for m in (1, 0, 1)]
    for m in layers:
        m.net = 0
        assert m.forward_experts("x", "logits", None, None, None)[0] == "out"
    other = cls()
    other.net = 1  # a second engine built in the same process numbers its layers from 0 again
    other.forward_experts("x", "logits", None, None, None)
    got = [{n: v for n, v, _ in fields} for _, fields, _ in trt.created]
    assert [g["layer_index"] for g in got] == [0, 1, 2, 0]
    assert [g["routing"] for g in got] == [1, 0, 1, 1]
    assert all(g["context_id"] == 5 and g["num_experts"] == 8 and g["top_k"] == 2 and g["hidden_size"] == 256
               and g["intermediate_size"] == 128 and g["dtype"] == 0 for g in got)
    assert [inputs for inputs, _ in nets[0].layers] == [["x", "logits"]] * 3


def test_unsupported_models_are_refused_with_a_sentence():
    trt, nets = FakeTrt(), {0: FakeNetwork()}
    cls = _patched(trt, nets)
    sparse = cls(mode=2)
    sparse.net = 0
    with pytest.raises(DwdpConfigError, match="normalization_mode=2"):
        sparse.forward_experts("x", "logits", None, None, None)
    ep = cls(ep=2)
    ep.net = 0
    with pytest.raises(DwdpConfigError, match="moe_ep_size"):
        ep.forward_experts("x", "logits", None, None, None)


def test_missing_plugin_library_is_named():
    trt, nets = FakeTrt(registered=False), {0: FakeNetwork()}
    m = _patched(trt, nets)()
    m.net = 0
    with pytest.raises(RuntimeError, match="libdwdp_trt_plugin.so"):
        m.forward_experts("x", "logits", None, None, None)


def test_build_flag():
    parser = argparse.ArgumentParser()
    ef.add_build_flag(parser)
    assert ef.options_from_args(parser.parse_args([])) is None
    assert ef.options_from_args(parser.parse_args(["--dwdp_group_size", "4"])).group_size == 4
    with pytest.raises(DwdpConfigError, match="--dwdp_group_size=-2"):
        ef.options_from_args(parser.parse_args(["--dwdp_group_size", "-2"]))
