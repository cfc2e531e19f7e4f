"""Stand-ins for the TensorRT engine flow: TensorRT-LLM's engine-flow MixtureOfExperts (tensorrt_llm/layers/moe.py)
and the slice of TensorRT's Python API the plugin emission uses.

Each mimicked signature and attribute names where it was read; tests/test_trtllm_contracts.py checks them against
tests/contracts/*.json, the facts the contract script extracted from upstream's files.
"""

import enum
from types import SimpleNamespace


class SideStreamIDType(enum.IntEnum):
    """functional.SideStreamIDType as MixtureOfExperts.forward compares it (`!= SideStreamIDType.disable`)."""

    disable = 0
    moe = 1


class ExpertScaleNormalizationMode(enum.IntEnum):
    """MoeConfig.ExpertScaleNormalizationMode (layers/moe.py)."""

    NONE = 0
    RENORMALIZE = 1
    SPARSE_MIXER = 2
    DEVICE_LIMITED = 3
    DEVICE_LIMITED_RENORM = 4


class MixtureOfExperts:
    """layers/moe.py MixtureOfExperts: attributes the DWDP patch reads, and forward as upstream has it: route in
    the network, then forward_experts(hidden_states, token_selected_experts, token_final_scales,
    lora_layer_params, side_stream_id); with a side stream enabled forward unpacks a pair from forward_experts."""

    def __init__(self, num_experts=8, top_k=2, hidden=256, inter=128, mode=1, ep=1, hidden_act="swiglu"):
        self.num_experts, self.top_k, self.hidden_size, self.expert_inter_size = num_experts, top_k, hidden, inter
        self.hidden_act = hidden_act
        self.moe_config = SimpleNamespace(num_experts=num_experts, top_k=top_k, normalization_mode=mode)
        self.mapping = SimpleNamespace(moe_tp_size=1, moe_ep_size=ep, has_moe_tp=lambda: False,
                                       has_moe_ep=lambda: ep > 1)
        self.static_routing = False
        self.routed = []  # the routing each forward computed: (mode, logits input)

    def forward(self, hidden_states, lora_layer_params=None, all_reduce_params=None, last_local_layer_residual=None,
                side_stream_id=SideStreamIDType.disable, static_routing_input=None):
        if self.static_routing:
            token_selected_experts, token_final_scales = static_routing_input, None
        else:
            mode = ExpertScaleNormalizationMode(self.moe_config.normalization_mode)
            self.routed.append((mode.name, hidden_states))
            token_selected_experts, token_final_scales = f"ids({mode.name})", f"scales({mode.name})"
        output = self.forward_experts(hidden_states, token_selected_experts, token_final_scales, lora_layer_params,
                                      side_stream_id)
        if side_stream_id != SideStreamIDType.disable:
            output, _sync = output
        return output

    def forward_experts(self, hidden_states, token_selected_experts, token_final_scales, lora_layer_params,
                        side_stream_id):
        raise RuntimeError("TensorRT-LLM's MoE plugin was emitted")


class FakeTrt:
    """The slice of TensorRT's Python API that emit_plugin uses; records what was created."""

    int32 = "int32"

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


class BaseWorker:
    """executor/base_worker.py BaseWorker: the LLM API's worker (LLM(backend="tensorrt"), trtllm-serve). setup_engine
    picks this rank's engine from a list, then builds the executor: for the TensorRT backend
    tllm.Executor(self._engine, ModelType.DECODER_ONLY, executor_config), which deserialises the engine."""

    def __init__(self, engine, rank=0, llm_args=None, opened=None):
        self._engine, self.rank, self.llm_args = engine, rank, llm_args
        self.opened = opened if opened is not None else []
        self.engine = None

    def setup_engine(self):
        if isinstance(self._engine, list):
            self._engine = self._engine[self.rank]
        self.opened.append(("executor", self._engine))
        self.engine = ("Executor", self._engine)
