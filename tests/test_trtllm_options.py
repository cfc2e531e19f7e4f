"""The `dwdp:` options: the environment variable, the options file, errors, and the launch wrapper."""

import os
import subprocess
import sys

import pytest
import yaml

from tensorrt_llm_dwdp.config import DwdpConfigError
from tensorrt_llm_dwdp.integrations.trtllm.launch import find_flag, prepare
from tensorrt_llm_dwdp.integrations.trtllm.options import (ENV_FILE, ENV_INLINE, load_options, parse_inline,
                                                           parse_section, strip_section)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _copies_in_tmp_path(tmp_path, monkeypatch):
    """prepare() writes the option copies the launched command reads (kept: the command runs after it); here they
    go to the test's own folder, not the machine's /tmp."""
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def _yaml(tmp_path, doc, name="opts.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_inline_values():
    assert parse_inline("1") == {} and parse_inline("true") == {}
    assert parse_inline("0") == {"enable": False} and parse_inline(" off ") == {"enable": False}
    got = parse_inline("group_size=4, prefetch_depth=3,placement=0-3,8;4-7,slice_bytes=1MiB")
    assert got == {"group_size": "4", "prefetch_depth": "3", "placement": "0-3,8;4-7", "slice_bytes": "1MiB"}
    opts = parse_section(got, "env")
    assert opts.fields == {"group_size": 4, "prefetch_depth": 3, "placement": ((0, 1, 2, 3, 8), (4, 5, 6, 7)),
                           "slice_bytes": 1 << 20}
    with pytest.raises(DwdpConfigError, match="is not key=value"):
        parse_inline("group_size")


def test_unknown_key_names_the_option_and_suggests():
    with pytest.raises(DwdpConfigError) as e:
        parse_section({"prefetch_dept": 2}, "opts.yaml")
    msg = str(e.value)
    assert e.value.option == "dwdp.prefetch_dept" and "did you mean 'prefetch_depth'" in msg and "opts.yaml" in msg


@pytest.mark.parametrize("section,option,words", [
    ({"group_size": "four"}, "dwdp.group_size", "must be an integer"),
    ({"group_size": True}, "dwdp.group_size", "must be an integer"),
    ({"memory_backend": "nvshmem"}, "dwdp.memory_backend", "cuda_ipc"),
    ({"mode": "dep"}, "dwdp.mode", "auto"),
    ({"enable": "maybe"}, "dwdp.enable", "true or false"),
    ({"placement": [[0, "x"]]}, "dwdp.placement", "expert-id lists"),
    ({"slice_bytes": "2 parsecs"}, "dwdp.slice_bytes", "32MiB"),
])
def test_bad_values(section, option, words):
    with pytest.raises(DwdpConfigError) as e:
        parse_section(section)
    assert e.value.option == option and words in str(e.value)


def test_section_must_be_a_mapping():
    with pytest.raises(DwdpConfigError, match="must be a mapping"):
        parse_section([1, 2])
    assert parse_section(None).enable and parse_section({}).mode == "dwdp"


def test_config_from_options_and_model_facts():
    opts = parse_section({"prefetch_depth": 3, "pull_issue": "batched", "mode": "auto", "isl": "normal:8192:0.2"})
    c = opts.config(num_experts=64, group_size=8, weight_dtype="bfloat16")
    assert (c.group_size, c.num_experts, c.prefetch_depth, c.pull_issue) == (8, 64, 3, "batched")
    assert opts.mode == "auto" and opts.isl == "normal:8192:0.2"
    with pytest.raises(DwdpConfigError, match="the model has 64"):
        parse_section({"num_experts": 32}).config(num_experts=64, group_size=8, weight_dtype="bfloat16")
    with pytest.raises(DwdpConfigError) as e:  # DwdpConfig's own value checks, before the model is known
        parse_section({"prefetch_depth": 1})
    assert e.value.option == "dwdp.prefetch_depth"
    with pytest.raises(DwdpConfigError) as e:  # and those that need the model, once it is
        parse_section({"experts_per_rank": 3}).config(num_experts=64, group_size=8, weight_dtype="bfloat16")
    assert e.value.option == "experts_per_rank"


def test_load_options_from_env_and_file(tmp_path):
    assert load_options({}) is None
    path = _yaml(tmp_path, {"max_num_tokens": 8192, "dwdp": {"prefetch_depth": 3, "memory_backend": "cuda_vmm"}})
    opts = load_options({ENV_FILE: path})
    assert opts.fields == {"prefetch_depth": 3, "memory_backend": "cuda_vmm"} and path in opts.source
    both = load_options({ENV_FILE: path, ENV_INLINE: "prefetch_depth=4"})  # inline overrides the file
    assert both.fields == {"prefetch_depth": 4, "memory_backend": "cuda_vmm"}
    assert not load_options({ENV_INLINE: "0"}).enable
    with pytest.raises(DwdpConfigError, match="no top-level `dwdp:` section"):
        load_options({ENV_FILE: _yaml(tmp_path, {"max_num_tokens": 1}, "plain.yaml")})
    with pytest.raises(DwdpConfigError, match="cannot be read"):
        load_options({ENV_FILE: str(tmp_path / "missing.yaml")})
    bad = tmp_path / "bad.yaml"
    bad.write_text("dwdp: [unclosed\n")
    with pytest.raises(DwdpConfigError, match="not valid YAML"):
        load_options({ENV_FILE: str(bad)})


def test_strip_section():
    rest, section, has = strip_section({"a": 1, "dwdp": {"group_size": 2}})
    assert rest == {"a": 1} and section == {"group_size": 2} and has
    assert strip_section({"a": 1}) == ({"a": 1}, None, False) and strip_section(None) == (None, None, False)


def test_find_flag_forms():
    assert find_flag(["x", "--config", "a.yaml"], ("--config",)) == (2, "a.yaml")
    assert find_flag(["x", "--extra_llm_api_options=b.yaml"], ("--extra_llm_api_options",)) == (1, "b.yaml")
    assert find_flag(["x", "--config", "a", "--config=b"], ("--config",)) == (3, "b")  # the last one wins
    assert find_flag(["x", "--config"], ("--config",)) is None


@pytest.mark.parametrize("form", ["--extra_llm_api_options", "--config="])
def test_launch_rewrites_options_file(tmp_path, form):
    path = _yaml(tmp_path, {"enable_attention_dp": True, "dwdp": {"prefetch_depth": 2}})
    args = [form + path] if form.endswith("=") else [form, path]
    launch = prepare(["trtllm-llmapi-launch", "trtllm-serve", "model", *args], {"PATH": "/bin"})
    copy = launch.argv[-1].split("=", 1)[-1]
    assert copy != path and launch.env[ENV_FILE] == os.path.abspath(path)
    filtered = yaml.safe_load(open(copy))
    assert filtered == {"enable_attention_dp": True, "cuda_graph_config": None,  # no dwdp key left
                        "torch_compile_config": None}
    assert any("cuda_graph_config: null" in n for n in launch.notes)
    assert any("torch_compile_config: null" in n for n in launch.notes)
    os.remove(copy)


def test_launch_refuses_cuda_graphs_and_missing_section(tmp_path):
    path = _yaml(tmp_path, {"cuda_graph_config": {"max_batch_size": 8}, "dwdp": {}})
    with pytest.raises(DwdpConfigError) as e:
        prepare(["trtllm-serve", "m", "--config", path], {})
    assert e.value.option == "cuda_graph_config" and "null" in str(e.value)
    compiled = _yaml(tmp_path, {"torch_compile_config": {"enable_fullgraph": True}, "dwdp": {}}, "compiled.yaml")
    with pytest.raises(DwdpConfigError) as e:
        prepare(["trtllm-serve", "m", "--config", compiled], {})
    assert e.value.option == "torch_compile_config" and "null" in str(e.value)
    plain = _yaml(tmp_path, {"max_num_tokens": 8}, "plain.yaml")
    with pytest.raises(DwdpConfigError, match="has no dwdp: section"):
        prepare(["trtllm-serve", "m", "--config", plain], {})
    inline = prepare(["trtllm-serve", "m", "--config", plain], {ENV_INLINE: "1"})  # the variable alone enables
    assert inline.argv[-1] == plain and ENV_FILE not in inline.env
    with pytest.raises(DwdpConfigError, match="did you mean"):  # checked before anything starts
        prepare(["trtllm-serve", "m"], {ENV_INLINE: "group_sise=2"})


def _disagg(tmp_path):
    return _yaml(tmp_path, {
        "hostname": "localhost", "port": 8000, "backend": "pytorch",
        "context_servers": {"num_instances": 2, "tensor_parallel_size": 4, "enable_attention_dp": True,
                            "moe_expert_parallel_size": 4, "cuda_graph_config": None,
                            "dwdp": {"prefetch_depth": 2}, "urls": ["localhost:8001", "localhost:8002"]},
        "generation_servers": {"num_instances": 1, "tensor_parallel_size": 8, "urls": ["localhost:8003"]},
    }, "disagg.yaml")


@pytest.mark.parametrize("rank,ctx", [(0, True), (7, True), (8, False), (15, False)])
def test_launch_disaggregated_worker_context_ranks_only(tmp_path, rank, ctx):
    path = _disagg(tmp_path)
    env = {"OMPI_COMM_WORLD_RANK": str(rank), ENV_INLINE: "1"}
    launch = prepare(["trtllm-serve", "disaggregated_mpi_worker", "-c", path], env)
    copy = launch.argv[-1]
    doc = yaml.safe_load(open(copy))
    assert "dwdp" not in doc["context_servers"] and doc["generation_servers"]["num_instances"] == 1
    if ctx:
        assert yaml.safe_load(open(launch.env[ENV_FILE])) == {"dwdp": {"prefetch_depth": 2}}
        assert load_options(launch.env).fields == {"prefetch_depth": 2}
        os.remove(launch.env[ENV_FILE])
    else:
        assert ENV_FILE not in launch.env and ENV_INLINE not in launch.env
    os.remove(copy)


def test_launch_disaggregated_top_level_graphs_move_to_generation_and_cp_is_not_a_rank_factor(tmp_path):
    doc = yaml.safe_load(open(_disagg(tmp_path)))
    doc["cuda_graph_config"] = {"max_batch_size": 16}  # top level: TensorRT-LLM refuses it with a server's null
    del doc["context_servers"]["cuda_graph_config"]
    doc["context_servers"]["context_parallel_size"] = 2  # 1.2 does not count it: 2 x 4 context ranks, not 16
    path = _yaml(tmp_path, doc, "top-graphs.yaml")
    launch = prepare(["trtllm-serve", "disaggregated_mpi_worker", "-c", path], {"PMI_RANK": "8", ENV_INLINE: "1"})
    copy = yaml.safe_load(open(launch.argv[-1]))
    assert "cuda_graph_config" not in copy
    assert copy["generation_servers"]["cuda_graph_config"] == {"max_batch_size": 16}
    assert copy["context_servers"]["cuda_graph_config"] is None and copy["context_servers"]["torch_compile_config"] is None
    assert ENV_FILE not in launch.env  # rank 8 is a generation server
    doc["generation_servers"]["cuda_graph_config"] = None
    with pytest.raises(DwdpConfigError, match="top level and under generation_servers"):
        prepare(["trtllm-serve", "disaggregated_mpi_worker", "-c", _yaml(tmp_path, doc, "both.yaml")], {"PMI_RANK": "0"})


def test_launch_disaggregated_errors(tmp_path):
    path = _yaml(tmp_path, {"dwdp": {}, "context_servers": {}}, "top.yaml")
    with pytest.raises(DwdpConfigError, match="move the dwdp: section under context_servers"):
        prepare(["trtllm-serve", "disaggregated_mpi_worker", "-c", path], {"PMI_RANK": "0"})
    ok = _disagg(tmp_path)
    with pytest.raises(DwdpConfigError, match="MPI rank"):
        prepare(["trtllm-serve", "disaggregated_mpi_worker", "--config_file", ok], {})


def test_cli_launch_dry_run_and_exit_codes(tmp_path):
    path = _yaml(tmp_path, {"cuda_graph_config": None, "dwdp": {"prefetch_depth": 2}})
    env = {k: v for k, v in os.environ.items() if k not in (ENV_FILE, ENV_INLINE)}
    run = lambda *a: subprocess.run([sys.executable, "-m", "tensorrt_llm_dwdp", "launch", *a],  # noqa: E731
                                    capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    ok = run("--dry-run", "--", "trtllm-serve", "m", "--config", path)
    assert ok.returncode == 0 and f"{ENV_FILE}={path}" in ok.stdout, ok.stderr
    assert not os.path.exists(ok.stdout.split()[3])  # a dry run leaves no filtered copy behind
    helped = run("--help")
    assert helped.returncode == 0 and "disaggregated_mpi_worker" in helped.stdout
    bad = run("--", "trtllm-serve", "m", "--config", _yaml(tmp_path, {"dwdp": {"grup_size": 2}}, "bad.yaml"))
    assert bad.returncode == 2 and "did you mean 'group_size'" in bad.stderr
    code = "import os, sys; print(os.environ['TRTLLM_DWDP_OPTIONS']); os.remove(sys.argv[-1])"
    echo = run("--", sys.executable, "-c", code, "--config", path)
    assert echo.returncode == 0 and echo.stdout.strip() == path  # exec'd the command with the variable set
