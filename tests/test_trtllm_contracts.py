"""The stand-ins of TensorRT-LLM checked against the contracts extracted from upstream's own files.

tests/contracts/trtllm-<release>.json are written by tools/trtllm_contract.py from a TensorRT-LLM tree (each fact
with its file and commit). Every fact there has a check against the stand-in that mimics it (tests/trtllm_fakes*.py,
tests/trtllm_engine_fakes.py) or a stated reason why no stand-in mimics it; a contract fact with neither, or a
stand-in that drifts from a fact, fails here.
"""

import ast
import inspect
import json
import math
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import trtllm_engine_fakes as ef
import trtllm_fakes as fk
import trtllm_fakes_configurable as cf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import trtllm_contract as tc  # noqa: E402

RELEASES = ("1.2", "main")


def _contract(release):
    return json.loads((ROOT / "tests" / "contracts" / f"trtllm-{release}.json").read_text())


def _sig(fn):
    """inspect's view of a stand-in, in the contract's form."""
    kinds = {inspect.Parameter.POSITIONAL_ONLY: "positional", inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional",
             inspect.Parameter.VAR_POSITIONAL: "var_positional", inspect.Parameter.KEYWORD_ONLY: "keyword_only",
             inspect.Parameter.VAR_KEYWORD: "var_keyword"}
    return [{"name": p.name, "kind": kinds[p.kind], "default": p.default is not p.empty}
            for p in inspect.signature(fn).parameters.values() if p.name != "self"]


def _node(obj):
    return ast.parse(textwrap.dedent(inspect.getsource(obj))).body[0]


def _set_in_init(cls, value):
    """The stand-in sets in __init__ every attribute the contract says upstream sets there."""
    got = tc.init_attributes(_node(cls), list(value))
    return [n for n, v in value.items() if v["in_init"] and not got[n]["in_init"]]


def check_forward_signature(value):
    assert _sig(ef.MixtureOfExperts.forward) == value


def check_forward_experts_signature(value):
    assert _sig(ef.MixtureOfExperts.forward_experts) == value
    from tensorrt_llm_dwdp.integrations.trt_engine import build as engine_flow
    cls = type("MoE", (ef.MixtureOfExperts,), {})
    engine_flow.patch_moe_class(cls, engine_flow.EngineFlowOptions(group_size=2), trt=ef.FakeTrt(),
                                network_of=lambda m: ef.FakeNetwork())
    assert _sig(cls.forward_experts) == value  # the DWDP wrapper takes what upstream's forward passes


def check_forward_calls_forward_experts(value):
    assert tc.call_args(_node(ef.MixtureOfExperts.forward), "self.forward_experts") == value


def check_mixture_of_experts_attributes(value):
    assert not _set_in_init(ef.MixtureOfExperts, value)


def check_gated_experts(value):
    """Only a gated hidden_act gets fc [E, 2I, H] (layers/moe.py is_gated_activation: swiglu, geglu); the plugin
    computes SwiGLU, so the engine flow takes swiglu and nothing else (silu builds a non-gated expert)."""
    assert value == {"fc_out_size": ["self.expert_inter_size * 2 if is_gated_activation(self.hidden_act) "
                                     "else self.expert_inter_size"]}, f"upstream changed the expert layout: {value}"
    from tensorrt_llm_dwdp.config import DwdpConfigError
    from tensorrt_llm_dwdp.integrations.trt_engine import build as engine_flow
    assert engine_flow.fields_for(ef.MixtureOfExperts(hidden_act="swiglu"), 0, 0).intermediate_size == 128
    for act in ("silu", "geglu", "gelu"):
        with pytest.raises(DwdpConfigError, match="hidden_act"):
            engine_flow.fields_for(ef.MixtureOfExperts(hidden_act=act), 0, 0)


def check_normalization_modes(value):
    assert {m.name: int(m) for m in ef.ExpertScaleNormalizationMode} == value


def check_moe_attributes(value):
    moe = fk.CutlassFusedMoE(num_experts=4, hidden=16, inter=8, layer_idx=0,
                             activation_type=fk.ActivationType.Swiglu)
    for name, v in value.items():
        if not v["in_init"]:
            continue  # read with getattr defaults by the adapter: the stand-in may set it or not
        assert hasattr(moe, name), name
        if v["set_as"] == ["int"]:
            assert type(getattr(moe, name)) is int, f"{name}: upstream stores int(...), the stand-in {type(moe)}"


def check_configurable_attributes(value, release):
    calls = []

    class Recorded(cf.ConfigurableMoE):
        def _create_comm_strategy_auto(self):
            calls.append(self)
            return super()._create_comm_strategy_auto()

    m = Recorded(release, num_experts=8, hidden=16, inter=8, layer_idx=0, ep_size=2)
    for name, v in value.items():
        if v["in_init"]:
            assert hasattr(m, name), name
        elif name != "backend":  # main binds the backend in a helper __init__ calls; the stand-in does too
            assert not hasattr(m, name), f"{name}: upstream's __init__ does not set it in {release}"
        if v.get("set_as") == ["call self._create_comm_strategy_auto"]:
            assert calls == [m] and isinstance(m.comm, cf.AllGatherReduceScatter)
        if v.get("set_as") and all(t == "bool" for t in v["set_as"]):
            assert isinstance(getattr(m, name), bool)
        if name == "scheduler" and v["in_init"]:
            assert m.scheduler.comm is m.comm  # built from the exchange, last


KNOWN_NONE_WHEN = {"self.enable_dwdp", "self.backend.scheduler_kind == MoESchedulerKind.FUSED_COMM"}


def check_comm_none_when(value, release):
    assert set(value) <= KNOWN_NONE_WHEN, f"new conditions upstream: {set(value) - KNOWN_NONE_WHEN}"
    m = cf.ConfigurableMoE(release, num_experts=8, hidden=16, inter=8, layer_idx=0, ep_size=2)
    m.enable_dwdp = True
    got = m._create_comm_strategy_auto()
    assert (got is None) == ("self.enable_dwdp" in value)


ROWS = {"sum(all_rank_num_tokens)": "sum", "self._dp_padded_num_rows(all_rank_num_tokens)": "padded",
        "max(all_rank_num_tokens)": "max", "all_rank_num_tokens[0]": "one"}
BRANCHES = {(): ("sum",), ("self.use_dp and self.comm is not None", "self.enable_dwdp"): ("padded", "max", "one")}


def check_chunks(contract, release):
    rows = contract["facts"]["configurable_moe.calculate_num_chunks.rows"]["value"]["num_rows"]
    branches = tuple(contract["facts"]["configurable_moe.calculate_num_chunks.branches"]["value"])
    assert all(r in ROWS for r in rows) and branches in BRANCHES, f"new chunking upstream: {rows} {branches}"
    assert tuple(ROWS[r] for r in rows) == BRANCHES[branches]
    counts, limit = [3, 5], 3
    m = cf.ConfigurableMoE(release, num_experts=8, hidden=16, inter=8, layer_idx=0, ep_size=2)
    m.moe_max_num_tokens = limit
    if BRANCHES[branches] == ("sum",):
        assert m.calculate_num_chunks(counts) == math.ceil(sum(counts) / limit)
        return
    assert m.calculate_num_chunks(counts) == math.ceil(len(counts) * max(counts) / limit)  # with an exchange
    m.comm = None
    with pytest.raises(AssertionError, match="single-element"):
        m.calculate_num_chunks(counts)
    m.enable_dwdp = True
    assert m.calculate_num_chunks(counts) == math.ceil(max(counts) / limit)


def check_fp8_shapes(value):
    n, hidden, inter = 4, 256, 384
    module = SimpleNamespace(expert_size_per_partition=n, intermediate_size_per_partition=inter, hidden_size=hidden)
    ns = {"module": module, "cell_div": lambda x, y: (x + y - 1) // y, "self": SimpleNamespace(FP8_QUANT_BLOCK_SIZE=128),
          "torch": SimpleNamespace(empty=lambda shape, dtype=None: tuple(shape), float32="float32"),
          "nn": SimpleNamespace(Parameter=lambda t, requires_grad=False: t)}
    for name in ("w3_w1_weight_shape", "w2_weight_shape"):
        (expr,) = value[name]
        ns[name] = eval(expr, {}, ns)  # upstream's own shape expression, with the stand-in's sizes
    moe = fk.DeepGemmFusedMoE(num_experts=n, hidden=hidden, inter=inter, layer_idx=0)
    assert tuple(moe.w3_w1_weight.shape) == ns["w3_w1_weight_shape"]
    assert tuple(moe.w2_weight.shape) == ns["w2_weight_shape"]
    for param in ("w3_w1_weight_scaling_factor", "w2_weight_scaling_factor"):
        for expr in value[param]:
            assert tuple(getattr(moe, param).shape) == eval(expr, {}, ns), param


def check_w3_w1_order(value):
    assert value == [["[w3_weight_shard, w1_weight_shard]", "dim=0"]], f"upstream changed the order: {value}"
    full = fk.full_experts(2, 8, 4, seed=0)
    moe = fk.CutlassFusedMoE(num_experts=2, hidden=8, inter=4, layer_idx=0)
    moe.load_weights(full)
    assert torch.equal(moe.w3_w1_weight[:, :4], full["w3"]) and torch.equal(moe.w3_w1_weight[:, 4:], full["w1"])


def check_setup_quant_scales(value):
    assert _sig(fk.DeepSeekFP8BlockScalesFusedMoEMethod.setup_quant_scales) == value


def check_swiglu_carrier(value):
    """Newer main's SwigluActivation: one constant, clamp, default None (plain SwiGLU): what the stand-in has."""
    import dataclasses
    assert {k: v["default"] for k, v in value.items() if not v["annotation"].startswith("ClassVar")} == {"clamp": "None"}
    assert [(f.name, f.default) for f in dataclasses.fields(fk.SwigluActivation)] == [("clamp", None)]


def check_setup_engine(value):
    assert _sig(ef.BaseWorker.setup_engine) == value


def check_worker_attributes(value):
    assert not _set_in_init(ef.BaseWorker, value)


CHECKS = {
    "mixture_of_experts.forward.signature": check_forward_signature,
    "mixture_of_experts.forward_experts.signature": check_forward_experts_signature,
    "mixture_of_experts.forward.calls_forward_experts": check_forward_calls_forward_experts,
    "mixture_of_experts.init.attributes": check_mixture_of_experts_attributes,
    "moe_config.normalization_modes": check_normalization_modes,
    "mixture_of_experts.init_experts.fc_out_size": check_gated_experts,
    "moe.init.attributes": check_moe_attributes,
    "quant.fp8_block_scales.shapes": check_fp8_shapes,
    "quant.w3_w1.order": check_w3_w1_order,
    "quant.setup_quant_scales.signature": check_setup_quant_scales,
    "base_worker.setup_engine.signature": check_setup_engine,
    "base_worker.init.attributes": check_worker_attributes,
    "moe_activation.swiglu.fields": check_swiglu_carrier,
}
# facts of files a release does not have
ABSENT = {("1.2", "moe_activation.swiglu.fields"): "activation carriers came to main after the 1.2 line"}
BY_RELEASE = {"configurable_moe.init.attributes": check_configurable_attributes,
              "configurable_moe.comm_strategy.none_when": check_comm_none_when}
WHOLE = {"configurable_moe.calculate_num_chunks.branches": check_chunks,
         "configurable_moe.calculate_num_chunks.rows": check_chunks}
NOT_MIMICKED = {
    "moe.init.signature": "stand-ins take their own constructor arguments; the adapter never builds upstream's modules",
    "create_moe.configurable_moe_default": "no stand-in of create_moe: every ConfigurableMoE shape is tested, wrapped "
                                           "or not, whatever the default",
}


@pytest.mark.parametrize("release", RELEASES)
def test_every_fact_has_its_source_and_a_check(release):
    contract = _contract(release)
    assert contract["release"] == release
    for fid, fact in contract["facts"].items():
        if (release, fid) in ABSENT:
            assert "missing" in fact, f"{fid}: found in {release}; check the stand-in against it"
            continue
        assert "missing" not in fact, f"{fid}: {fact['missing']}"
        assert fact["file"] and fact["commit"], fid
        assert fid in CHECKS or fid in BY_RELEASE or fid in WHOLE or fid in NOT_MIMICKED, \
            f"{fid}: no stand-in check for this contract fact"


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize("fid", sorted(set(CHECKS) | set(BY_RELEASE)))
def test_stand_ins_match_the_contract(release, fid):
    if (release, fid) in ABSENT:
        pytest.skip(ABSENT[(release, fid)])
    value = _contract(release)["facts"][fid]["value"]
    if fid in CHECKS:
        CHECKS[fid](value)
    else:
        BY_RELEASE[fid](value, release)


@pytest.mark.parametrize("release", RELEASES)
def test_configurable_moe_chunking_matches_the_contract(release):
    check_chunks(_contract(release), release)


def test_the_fakes_are_checked_against_a_different_contract_too():
    """A drifted contract fails the checks: main's forward_experts with one more parameter."""
    value = _contract("main")["facts"]["mixture_of_experts.forward_experts.signature"]["value"]
    with pytest.raises(AssertionError):
        check_forward_experts_signature(value + [{"name": "extra", "kind": "positional", "default": False}])
    with pytest.raises(AssertionError):
        check_moe_attributes({"activation_type": {"in_init": True, "set_as": ["int"]},
                              "num_shards": {"in_init": True, "set_as": ["int"]}})


# ---- the extractor itself, on a tree written here --------------------------------------------------------------

SAMPLE = '''
class MoE:
    def __init__(self, *, num_experts, activation_type=3, layer_idx=None):
        self.activation_type = int(activation_type)
        self.layer_idx = layer_idx
        self.ids = [e for e in range(num_experts)]


def create_moe(routing_method):
    if os.environ.get("ENABLE_CONFIGURABLE_MOE", "1") == "1":
        return None
'''


def test_the_extractor_reads_a_tree_and_says_what_changed(tmp_path, capsys):
    path = tmp_path / "tensorrt_llm/_torch/modules/fused_moe"
    path.mkdir(parents=True)
    (path / "interface.py").write_text(SAMPLE)
    (path / "create_moe.py").write_text(SAMPLE)
    (tmp_path / "SOURCES.json").write_text(json.dumps({"tensorrt_llm/_torch/modules/fused_moe/interface.py":
                                                       {"commit": "abc", "note": "written here"}}))
    got = tc.read_tree(tmp_path, "x")["facts"]
    assert got["moe.init.signature"]["value"] == [
        {"name": "num_experts", "kind": "keyword_only", "default": False},
        {"name": "activation_type", "kind": "keyword_only", "default": True},
        {"name": "layer_idx", "kind": "keyword_only", "default": True}]
    assert got["moe.init.signature"]["commit"] == "abc"
    attrs = got["moe.init.attributes"]["value"]
    assert attrs["activation_type"] == {"in_init": True, "set_as": ["int"]} and attrs["ep_size"] == {"in_init": False}
    assert got["create_moe.configurable_moe_default"]["value"] == "'1'"
    assert "missing" in got["mixture_of_experts.forward.signature"]  # no layers/moe.py in this tree
    out = tmp_path / "old.json"
    assert tc.main([str(tmp_path), "--release", "x", "--out", str(out)]) == 0
    (path / "interface.py").write_text(SAMPLE.replace("int(activation_type)", "activation_type"))
    assert tc.main([str(tmp_path), "--release", "x", "--compare", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "moe.init.attributes" in printed and '"int"' in printed and "expr activation_type" in printed
