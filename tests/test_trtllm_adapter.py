"""The TensorRT-LLM adapter on modules shaped like TensorRT-LLM's (tests/trtllm_fakes.py), on CPU ranks."""

import os
import subprocess
import sys

import pytest
import torch

import trtllm_fakes as fk
from conftest import fresh_seed
from tensorrt_llm_dwdp.config import WEIGHT_DTYPES, DwdpConfigError
from tensorrt_llm_dwdp.integrations.trtllm import adapter, predict
from tensorrt_llm_dwdp.integrations.trtllm.discover import describe, find_moe_layers
from tensorrt_llm_dwdp.integrations.trtllm.options import parse_section
from tensorrt_llm_dwdp.integrations.trtllm.steps import StepState

MPI = pytest.importorskip("mpi4py.MPI")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _uninstall():
    yield
    adapter.uninstall()


def _model(cls=fk.CutlassFusedMoE, seed=0, layers=2, experts=8, hidden=16, inter=8, wrap=None, **kw):
    """wrap: None, or "1.2" / "main": each layer a ConfigurableMoE of that shape, built its way, around cls."""
    fulls = [fk.full_experts(experts, hidden, inter, seed + layer) for layer in range(layers + 1)]
    moes = []
    for layer in range(layers + 1):  # the last one plays DeepSeek's MTP layer (layer_idx == num_hidden_layers)
        kw_layer = dict(num_experts=experts, hidden=hidden, inter=inter, layer_idx=layer, **kw)
        moe = fk.ConfigurableMoE(wrap, backend_cls=cls, **kw_layer) if wrap else cls(**kw_layer)
        (moe.backend if wrap else moe).load_weights(fulls[layer])
        moes.append(moe)
    blocks = [fk.Block(m, hidden, seed + 100 + i) for i, m in enumerate(moes)]
    return fk.Decoder(blocks[:-1], mtp=blocks[-1]), fulls[:-1]


def _opts(**kw):
    return parse_section(dict(memory_backend="cpu_shm", **kw))


def _tensors(model):
    return {n: (p.detach().clone(), p.stride()) for n, p in model.named_parameters()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k][0], b[k][0]) and a[k][1] == b[k][1] for k in a)


def test_find_moe_layers_counts_a_wrapper_once_and_skips_mtp():
    model, _ = _model(wrap="main", layers=3)
    found = find_moe_layers(model, model.config.num_hidden_layers)
    assert [t[0] for t in found] == [0, 1, 2]
    assert all(isinstance(m, fk.ConfigurableMoE) and h is m.backend for _, m, h in found)
    assert len(find_moe_layers(model)) == 4  # without the layer count, MTP counts too


@pytest.mark.parametrize("cls,wrap", [(fk.CutlassFusedMoE, None), (fk.CutlassFusedMoE, "1.2"),
                                      (fk.CutlassFusedMoE, "main")])
def test_attach_runs_the_model_through_the_hooks_and_uninstall_restores_it(cls, wrap):
    seed = fresh_seed()
    model, fulls = _model(cls, seed, wrap=wrap)
    before = _tensors(model)
    engine = fk.Engine(model)
    hooks = adapter.attach(engine, _opts(), comm=MPI.COMM_SELF, device=torch.device("cpu"))
    assert hooks is not None and "forward" in vars(engine)
    holders = [b.experts.backend if wrap else b.experts for b in model.layers]
    assert all(h.w3_w1_weight.numel() == 0 and h.w2_weight.numel() == 0 for h in holders)  # the shard has them
    g = torch.Generator().manual_seed(seed + 7)
    for tokens in (5, 0, 3):  # a step may carry no tokens
        x = torch.randn(tokens, 16, generator=g)
        calls = [h.kernel_calls for h in holders]
        with torch.no_grad():
            got = engine.forward(x)
        assert torch.allclose(got, fk.reference_forward(x, model.layers, fulls), rtol=1e-5, atol=1e-5)
        assert [h.kernel_calls for h in holders] == [c + 1 for c in calls]  # the modules' own kernels ran
        assert all(h.w3_w1_weight.shape[0] == h.expert_size_per_partition == 8 for h in holders)
    assert len(hooks.metrics()) == 3  # one step per engine.forward
    with torch.no_grad():  # a forward outside engine.forward (TensorRT-LLM's warm-up) is a step of its own
        got = model(x)
    assert torch.allclose(got, fk.reference_forward(x, model.layers, fulls), rtol=1e-5, atol=1e-5)
    assert len(hooks.metrics()) == 4
    adapter.uninstall()
    assert _same(before, _tensors(model))  # values and TensorRT-LLM's strides
    assert "forward" not in vars(engine) and all("forward" not in vars(b.experts) for b in model.layers)


@pytest.mark.parametrize("version", ["1.2", "main"])
def test_exchanges_chosen_at_construction_are_refused(version):
    # ConfigurableMoE under attention DP over 2 expert-parallel ranks, built before the adapter was installed
    wrapped = fk.ConfigurableMoE(version, num_experts=8, hidden=16, inter=8, layer_idx=0, ep_size=2)
    assert isinstance(wrapped.comm, fk.AllGatherReduceScatter)
    with pytest.raises(DwdpConfigError, match="token exchange.*before DWDP was installed.*TRTLLM_DWDP") as e:
        describe(0, wrapped, wrapped.backend)
    assert e.value.option == "moe_config.backend"
    model, _ = _model()
    model.layers[1].experts.cluster_size = 2  # moe_cluster_parallel_size
    with pytest.raises(DwdpConfigError, match="moe_cluster_parallel_size"):
        _attach(model)
    model, _ = _model()
    model.layers[0].experts.enable_alltoall = True
    with pytest.raises(DwdpConfigError, match="all-to-all"):
        _attach(model)
    model, _ = _model(fk.TritonFusedMoE)  # its kernels read [E, H, 2I] interleaved, not the composite tensors
    with pytest.raises(DwdpConfigError, match="TritonFusedMoE"):
        _attach(model)


@pytest.mark.skipif("float8_e4m3fn" not in WEIGHT_DTYPES, reason="FP8 shards not in this build's DwdpConfig")
def test_attach_fp8_block_scaled_experts():
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    e, h, i = 4, 128, 256
    q, scales, dense = {}, {}, {}
    for name, (rows, cols) in {"w1": (i, h), "w3": (i, h), "w2": (h, i)}.items():
        s = torch.rand(e, rows // 128, cols // 128, generator=g) * 0.01 + 0.002
        big = s.repeat_interleave(128, 1).repeat_interleave(128, 2)
        q[name] = (torch.randn(e, rows, cols, generator=g) * 0.5).to(torch.float8_e4m3fn)
        scales[name], dense[name] = s, q[name].float() * big
    moe = fk.DeepGemmFusedMoE(num_experts=e, hidden=h, inter=i, layer_idx=0)
    moe.load_fp8(q, scales)
    model = fk.Decoder([fk.Block(moe, h, seed + 1)])
    engine = fk.Engine(model)
    adapter.attach(engine, _opts(), comm=MPI.COMM_SELF, device=torch.device("cpu"))
    x = torch.randn(6, h, generator=g)
    got = engine.forward(x)
    assert torch.allclose(got, fk.reference_forward(x, model.layers, [dense]), rtol=1e-4, atol=1e-4)


def _raises(option, **kw):
    model, _ = _model(**kw.pop("model", {}))
    for key, value in kw.items():
        setattr(model.layers[0].experts, key, value)
    with pytest.raises(DwdpConfigError) as e:
        adapter.attach(fk.Engine(model), _opts(), comm=MPI.COMM_SELF, device=torch.device("cpu"))
    assert e.value.option == option and "Fix:" in str(e.value)
    return str(e.value)


def test_setups_dwdp_cannot_serve_are_named():
    assert "CUTLASS" in _raises("moe_config.backend", model={"cls": fk.TRTLLMGenFusedMoE})
    assert "EPLB" in _raises("moe_config.load_balancer", layer_load_balancer=object())
    _raises("moe_tensor_parallel_size", tp_size=2)
    assert "true" in _raises("enable_attention_dp", model={"ep_size": 2}, use_dp=False)
    _raises("model", bias=True)
    m, _ = _model(wrap="main")
    m.layers[1].experts.enable_dwdp = True  # TensorRT-LLM's own DWDP on this layer
    with pytest.raises(DwdpConfigError, match="enable one DWDP"):
        adapter.attach(fk.Engine(m), _opts(), comm=MPI.COMM_SELF)


def test_options_that_do_not_match_tensorrt_llms_partition():
    model, _ = _model()
    with pytest.raises(DwdpConfigError) as e:
        adapter.attach(fk.Engine(model), _opts(group_size=2), comm=MPI.COMM_SELF)
    assert e.value.option == "dwdp.group_size" and "moe_expert_parallel_size=1" in str(e.value)
    model, _ = _model(ep_size=2, ep_rank=0)
    with pytest.raises(DwdpConfigError) as e:  # rank 0 would own experts TensorRT-LLM loads on rank 1
        adapter.attach(fk.Engine(model), _opts(placement="0-5;4-7"), comm=fk.TwoRankView(rank=0))
    assert e.value.option == "dwdp.placement"


def test_a_failed_setup_leaves_tensorrt_llms_weights_in_place():
    model, _ = _model(ep_size=2, ep_rank=0)
    before = _tensors(model)
    with pytest.raises(DwdpConfigError, match="does not divide the world of 1"):  # a group of 2 on one process
        adapter.attach(fk.Engine(model), _opts(), comm=MPI.COMM_SELF, device=torch.device("cpu"))
    assert _same(before, _tensors(model)) and adapter.current_hooks() is None


def test_mode_auto_without_a_prediction_leaves_the_model_alone(capsys):
    model, _ = _model()
    before = _tensors(model)
    engine = fk.Engine(model)
    engine.model_path = "/nonexistent/checkpoint"
    assert adapter.attach(engine, _opts(mode="auto"), comm=MPI.COMM_SELF) is None
    assert "mode auto leaves DWDP off" in capsys.readouterr().err
    assert _same(before, _tensors(model)) and "forward" not in vars(engine)


def test_draft_engines_are_not_attached():
    model, _ = _model()
    engine = fk.Engine(model)
    engine.is_draft_model = True
    assert adapter.attach(engine, _opts(), comm=MPI.COMM_SELF) is None


def test_install_patches_tensorrt_llm_modules_as_they_are_imported(tmp_path, monkeypatch):
    fk.write_fake_package(str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        adapter.install(_opts())
        from tensorrt_llm.llmapi import llm_args, llm_utils  # noqa: F401 - imported after install
        from tensorrt_llm._torch.pyexecutor.model_engine import PyTorchModelEngine
        extra = {"max_num_tokens": 8, "dwdp": {"prefetch_depth": 2}}
        assert llm_utils.update_llm_args_with_extra_dict({"model": "m"}, extra) == {"model": "m", "max_num_tokens": 8}
        model, fulls = _model()
        engine = PyTorchModelEngine(model_path="m", model=model)  # the model is attached as the engine is built
        x = torch.randn(4, 16)
        assert torch.allclose(engine.forward(x), fk.reference_forward(x, model.layers, fulls), rtol=1e-5, atol=1e-5)
        adapter.uninstall()
        with pytest.raises(ValueError, match="Extra inputs are not permitted"):  # TensorRT-LLM's own check is back
            llm_utils.update_llm_args_with_extra_dict({}, extra)
        assert "__init__" not in vars(PyTorchModelEngine) or PyTorchModelEngine.__init__.__module__ != adapter.__name__
    finally:
        for name in [n for n in sys.modules if n == "tensorrt_llm" or n.startswith("tensorrt_llm.")]:
            del sys.modules[name]


@pytest.mark.mpi
@pytest.mark.parametrize("kind,split,wrap", [("float32", "even", "none"), ("bfloat16", "uneven", "none"),
                                             ("fp8", "even", "none"), ("float32", "even", "main"),
                                             ("bfloat16", "even", "1.2"), ("fp8", "even", "main")])
@pytest.mark.parametrize("device,backend", [("cpu", "cpu_shm"), ("cpu", "cpu_shm@2MiB"),
                                            pytest.param("cuda", "cuda_ipc", marks=pytest.mark.gpu),
                                            pytest.param("cuda", "cuda_vmm", marks=pytest.mark.gpu)])
def test_two_ranks_expert_parallel_model_matches_the_full_model(tmp_path, device, backend, kind, split, wrap):
    """cpu_shm@2MiB: CPU ranks laying pieces out at an H200's mapping granularity, at the GPU cases' shapes.
    wrap: the layers are ConfigurableMoE stand-ins of the 1.2 line or main, built along their construction path."""
    from tensorrt_llm_dwdp.commands.mpirun import clean_launch_env, mpirun_command
    if kind == "fp8" and "float8_e4m3fn" not in WEIGHT_DTYPES:
        pytest.skip("FP8 shards not in this build's DwdpConfig")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    fk.write_fake_package(str(tmp_path))
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(tmp_path), ROOT, os.path.join(ROOT, "tests")]),
           "TRTLLM_DWDP": f"memory_backend={backend.split('@')[0]},slice_bytes=4096"}
    if backend.endswith("@2MiB"):
        env["DWDP_SHM_GRANULARITY"] = str(2 << 20)
    script = os.path.join(ROOT, "tests", "mpi_trtllm_adapter.py")
    cmd = mpirun_command(2, [script, str(fresh_seed()), device, kind, split, wrap], env)
    proc = subprocess.run(cmd, env=dict(clean_launch_env(dict(os.environ)), **env), capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0 and "PASS" in proc.stdout, proc.stdout + proc.stderr


def _attach(model, **opts):
    engine = fk.Engine(model)
    hooks = adapter.attach(engine, _opts(**opts), comm=MPI.COMM_SELF, device=torch.device("cpu"))
    return engine, hooks


def _close(got, model, fulls, x):
    return torch.allclose(got, fk.reference_forward(x, model.layers, fulls), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("where", [0, 1])
def test_a_failed_step_is_closed_and_the_executor_serves_the_next(where):
    seed = fresh_seed()
    model, fulls = _model(seed=seed, layers=3)
    engine, hooks = _attach(model)
    executor = fk.PyExecutor(engine)
    g = torch.Generator().manual_seed(seed + 1)
    model.layers[where].experts.routing_method.fail_next = RuntimeError("injected kernel failure")
    assert executor._forward_step(torch.randn(4, 16, generator=g)) is None  # swallowed, as TensorRT-LLM does
    assert [str(e) for e in executor.errors] == ["injected kernel failure"]
    assert adapter.current_steps().state is StepState.IDLE
    for tokens in (5, 2):
        x = torch.randn(tokens, 16, generator=g)
        assert _close(executor._forward_step(x), model, fulls, x)
    assert len(hooks.metrics()) == 2 and not executor.errors[1:]  # the good steps; an aborted one has none


def test_a_failed_warm_up_forward_is_closed_and_a_stale_step_is_closed_by_the_next():
    seed = fresh_seed()
    model, fulls = _model(seed=seed, layers=3)
    engine, hooks = _attach(model)
    g = torch.Generator().manual_seed(seed + 1)
    model.layers[1].experts.routing_method.fail_next = RuntimeError("warm-up failure")
    with pytest.raises(RuntimeError, match="warm-up failure"):  # main's DecoderRunner._forward_warmup path
        engine.warmup(torch.randn(3, 16, generator=g))
    assert adapter.current_steps().state is StepState.IDLE
    x = torch.randn(3, 16, generator=g)
    assert _close(engine.warmup(x), model, fulls, x)  # a warm-up forward is a step of its own
    # a failure between MoE layers (attention, say) of a warm-up: nothing closes the step at once
    model.layers[2].register_forward_pre_hook(_fail_once())
    with pytest.raises(RuntimeError, match="attention failure"):
        engine.warmup(torch.randn(3, 16, generator=g))
    assert adapter.current_steps().state is StepState.IMPLICIT
    x = torch.randn(6, 16, generator=g)
    assert _close(engine.forward(x), model, fulls, x)  # the next step closes it first
    assert _close(engine.warmup(x), model, fulls, x)
    assert len(hooks.metrics()) == 3  # the good steps


def _fail_once():
    left = [1]

    def hook(_mod, _inp):
        if left.pop() if left else 0:
            raise RuntimeError("attention failure")
    return hook


def test_moe_forward_arguments_reach_the_modules_own_forward_untouched():
    seed = fresh_seed()
    model, fulls = _model(seed=seed)
    _attach(model)
    moe, gate = model.layers[0].experts, model.layers[0].gate
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 16, generator=g)
    logits = x @ gate.t()
    ref = fk.reference_forward(x, model.layers[:1], fulls[:1]) - x
    adapter.current_steps().open(StepState.ENGINE)  # one layer by itself, inside a step
    got = moe(x, logits, True, torch.float64, [4], None, None, None)  # do_finalize, output_dtype... positionally
    assert got.dtype == torch.float64 and torch.allclose(got.float(), ref, rtol=1e-5, atol=1e-5)
    assert moe.kernel_calls == 1


@pytest.mark.parametrize("change,words", [
    ({"activation_type": int(fk.ActivationType.Geglu)}, "activation Geglu"),  # a plain int, as MoE.__init__ keeps it
    ({"swiglu_limit_scalar": 7.0}, "swiglu_limit_scalar=7.0"),
    ({"activation": fk.SwigluActivation(clamp=7.0)}, r"SwigluActivation\(clamp=7.0\)"),  # newer main's carrier
    ({"activation": fk.SimpleActivation(int(fk.ActivationType.Silu))}, "SimpleActivation"),
])
def test_activations_other_than_plain_swiglu_are_refused(change, words):
    model, _ = _model()
    for key, value in change.items():
        setattr(model.layers[1].experts, key, value)
    with pytest.raises(DwdpConfigError, match=words) as e:
        _attach(model)
    assert e.value.option == "model"


def test_plain_swiglu_carriers_of_newer_main_are_served():
    model, _ = _model()
    for b in model.layers:
        b.experts.activation = fk.SwigluActivation()
    engine, hooks = _attach(model)
    assert hooks is not None


def test_fp8_with_deepgemms_blackwell_scales_is_refused_without_advising_cutlass():
    moe = fk.DeepGemmFusedMoE(blackwell=True, num_experts=4, hidden=128, inter=256, layer_idx=0)
    with pytest.raises(DwdpConfigError) as e:
        _attach(fk.Decoder([fk.Block(moe, 128, 0)]))
    msg = str(e.value)
    assert e.value.option == "quant_config" and "DeepSeekFP8BlockScalesFusedMoEMethodDeepGemm" in msg
    assert "use CUTLASS" not in msg and "Blackwell serve BF16" in msg


def test_triton_fakes_assert_what_tensorrt_llm_asserts():
    kw = dict(num_experts=8, hidden=16, inter=8, layer_idx=0)
    with pytest.raises(AssertionError, match="AttentionDP"):  # 1.2: DWDP's setup (attention DP, EP > 1) never builds
        fk.TritonFusedMoE(version="1.2", ep_size=2, **kw)
    with pytest.raises(NotImplementedError, match="Hopper"):  # main: off Hopper with EP > 1
        fk.TritonFusedMoE(version="main", sm=10, ep_size=2, **kw)
    assert fk.TritonFusedMoE(version="main", sm=9, ep_size=2, ep_rank=1, **kw).initial_local_expert_ids == [4, 5, 6, 7]


def test_a_compiled_model_is_refused(tmp_path, monkeypatch):
    fk.write_fake_package(str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        adapter.install(_opts())
        from tensorrt_llm._torch.pyexecutor.model_engine import PyTorchModelEngine
        decoder, _ = _model()
        with pytest.raises(DwdpConfigError) as e:
            PyTorchModelEngine(model=fk.CausalLM(decoder), torch_compile=True)
        assert e.value.option == "torch_compile_config" and "null" in str(e.value)
    finally:
        for name in [n for n in sys.modules if n == "tensorrt_llm" or n.startswith("tensorrt_llm.")]:
            del sys.modules[name]


def test_spawned_mpi_pool_workers_get_the_dwdp_variables(tmp_path, monkeypatch):
    fk.write_fake_package(str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TRTLLM_DWDP", "prefetch_depth=2")
    monkeypatch.setenv("TRTLLM_DWDP_OPTIONS", str(tmp_path / "opts.yaml"))
    try:
        adapter.install(_opts())
        from tensorrt_llm.llmapi import mpi_session
        mpi_session.MpiPoolSession(n_workers=2)
        started = mpi_session.STARTED[-1]
        assert started["env"] == {"TRTLLM_DWDP": "prefetch_depth=2", "TRTLLM_DWDP_OPTIONS": str(tmp_path / "opts.yaml")}
        assert started["max_workers"] == 2 and started["path"] == sys.path
        adapter.uninstall()
        mpi_session.MpiPoolSession(n_workers=2)
        assert "env" not in mpi_session.STARTED[-1]
    finally:
        for name in [n for n in sys.modules if n == "tensorrt_llm" or n.startswith("tensorrt_llm.")]:
            del sys.modules[name]


def test_attach_says_why_dwdp_stays_off(capsys):
    model, _ = _model()
    _attach(model)
    other, _ = _model()
    assert adapter.attach(fk.Engine(other), _opts(), comm=MPI.COMM_SELF) is None
    assert "already attached" in capsys.readouterr().err
    adapter.uninstall()
    dense = fk.Decoder([])
    assert adapter.attach(fk.Engine(dense), _opts(), comm=MPI.COMM_SELF) is None
    assert "no MoE layers" in capsys.readouterr().err
    unnumbered, _ = _model()
    for b in unnumbered.layers:
        b.experts.layer_idx = None
    with pytest.raises(DwdpConfigError, match="no layer_idx"):
        adapter.attach(fk.Engine(unnumbered), _opts(), comm=MPI.COMM_SELF)


@pytest.mark.parametrize("name,dtype", [("deepseek-v3", "float8_e4m3fn"), ("qwen3-30b-a3b", "bfloat16")])
def test_mode_auto_decides_from_the_models_own_config(capsys, name, dtype):
    """The served model's config as TensorRT-LLM holds it (a transformers PretrainedConfig of the published
    config.json; no path, no hub id) is judged as the simulator's preset of the same model, with the experts' dtype."""
    transformers = pytest.importorskip("transformers")
    from test_checkpoint import PUBLISHED
    from tensorrt_llm_dwdp.sim.decide import decide
    from tensorrt_llm_dwdp.sim.machines import get_machine
    from tensorrt_llm_dwdp.sim.models import get_model, get_precision
    from tensorrt_llm_dwdp.sim.scenario import Scenario
    from tensorrt_llm_dwdp.workloads.requests import parse_isl
    cls = {"deepseek-v3": transformers.DeepseekV3Config, "qwen3-30b-a3b": transformers.Qwen3MoeConfig}[name]
    decoder, _ = _model()
    engine = fk.Engine(fk.CausalLM(decoder, cls(**PUBLISHED[name])))
    engine.model_path = "deepseek-ai/DeepSeek-V3"  # a hub id: not read
    options = _opts(mode="auto", machine="h200")
    ds = get_model(name)
    precision = get_precision("fp8" if dtype == "float8_e4m3fn" else "bf16")
    for tokens in (256, 32768):
        engine.max_num_tokens = tokens
        want = decide(Scenario(get_machine("h200"), ds, precision, 4, parse_isl(str(tokens)), tokens))
        assert predict.wanted(engine, options, 4, dtype) == (want.mode == "dwdp")
        assert f"mode auto chose {want.mode.upper()}: {want.reason}" in capsys.readouterr().err


def test_a_served_config_the_parser_refuses_is_named_in_one_line(capsys):
    """Mode auto: DWDP stays off, with one line naming the key; mode dwdp: on, with the same line."""
    from test_checkpoint import PUBLISHED
    decoder, _ = _model()
    engine = fk.Engine(fk.CausalLM(decoder, dict(PUBLISHED["deepseek-v3"], attention_bias=True)))
    engine.max_num_tokens = 8192
    for mode, on in (("auto", False), ("dwdp", True)):
        assert predict.wanted(engine, _opts(mode=mode, machine="h200"), 4, "bfloat16") is on
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no performance prediction: the served model's config" in err[0], err
        assert "attention_bias=True" in err[0] and err[0].endswith("mode auto leaves DWDP off") is not on


def test_a_group_the_performance_model_cannot_judge_is_named_in_the_deployments_words(capsys):
    """16 ranks on an H200 profile (8 GPUs per NVLink domain): mode auto leaves DWDP off, mode dwdp warns; both
    in one line naming TensorRT-LLM's and the dwdp section's options, not the simulator's."""
    transformers = pytest.importorskip("transformers")
    from test_checkpoint import PUBLISHED
    decoder, _ = _model()
    engine = fk.Engine(fk.CausalLM(decoder, transformers.Qwen3MoeConfig(**PUBLISHED["qwen3-30b-a3b"])))
    engine.max_num_tokens = 8192
    for mode, on, start in (("auto", False, "no performance prediction: "), ("dwdp", True, "warning: ")):
        assert predict.wanted(engine, _opts(mode=mode, machine="h200"), 16, "bfloat16") is on
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and start + "the performance model cannot judge this run on h200" in err[0], err
        assert "moe_expert_parallel_size 16" in err[0] and "dwdp.machine gb200" in err[0] and "--" not in err[0]


@pytest.mark.parametrize("version", ["1.2", "main"])
def test_configurable_moe_is_built_without_an_exchange_under_dwdp(tmp_path, monkeypatch, version):
    """As upstream's own DWDP does on main: with the adapter installed, ConfigurableMoE's construction path gets no
    exchange strategy for a layer DWDP serves; where DWDP then stays off, the layer gets TensorRT-LLM's back."""
    fk.write_fake_package(str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    kw = dict(num_experts=8, hidden=16, inter=8, layer_idx=0, ep_size=2)
    try:
        adapter.install(_opts())
        import tensorrt_llm._torch.modules.fused_moe.configurable_moe  # noqa: F401 - patched as it is imported
        served = fk.ConfigurableMoE(version, **kw)
        assert served.comm is None
        eplb = fk.ConfigurableMoE(version, **dict(kw, layer_idx=1))
        eplb.layer_load_balancer = object()  # not servable: a load balancer is wired in at construction upstream
        eplb.backend.layer_load_balancer = eplb.layer_load_balancer
        eplb.comm = eplb._create_comm_strategy_auto()
        assert isinstance(eplb.comm, fk.AllGatherReduceScatter)
        model = fk.Decoder([fk.Block(served, 16, 0)])
        engine = fk.Engine(model)
        engine.is_draft_model = True  # DWDP stays off for this model: the exchange comes back
        assert adapter.attach(engine, _opts(), comm=MPI.COMM_SELF) is None
        assert isinstance(served.comm, fk.AllGatherReduceScatter)
        if version == "main":  # its forward scheduler is built from the exchange, so it is built again
            assert served.scheduler.comm is served.comm
        adapter.uninstall()
        assert isinstance(fk.ConfigurableMoE(version, **kw).comm, fk.AllGatherReduceScatter)  # the class is back
    finally:
        for name in [n for n in sys.modules if n == "tensorrt_llm" or n.startswith("tensorrt_llm.")]:
            del sys.modules[name]


def test_fp8_scales_are_set_up_again_for_the_composite_tensors():
    """The quant method's scale arguments follow the swapped Parameters (setup_quant_scales after the swap)."""
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    e, h, i = 4, 128, 128
    q, scales, dense = {}, {}, {}
    for name, (rows, cols) in {"w1": (i, h), "w3": (i, h), "w2": (h, i)}.items():
        s = torch.rand(e, rows // 128, cols // 128, generator=g) * 0.01 + 0.002
        q[name] = (torch.randn(e, rows, cols, generator=g) * 0.5).to(torch.float8_e4m3fn)
        scales[name] = s
        dense[name] = q[name].float() * s.repeat_interleave(128, 1).repeat_interleave(128, 2)
    moe = fk.DeepGemmFusedMoE(num_experts=e, hidden=h, inter=i, layer_idx=0)
    moe.load_fp8(q, scales)
    model = fk.Decoder([fk.Block(moe, h, seed + 1)])
    engine = fk.Engine(model)
    adapter.attach(engine, _opts(), comm=MPI.COMM_SELF, device=torch.device("cpu"))  # frees the module's copy
    x = torch.randn(3, h, generator=g)
    assert torch.allclose(engine.forward(x), fk.reference_forward(x, model.layers, [dense]), rtol=1e-4, atol=1e-4)
    assert moe.quant_scales[0].data_ptr() == moe.w3_w1_weight_scaling_factor.data_ptr()
