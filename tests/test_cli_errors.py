"""Bad input at every command: exit code 2, one line that names the option, no traceback, no rank started.

Each case runs the console entry point as a subprocess. The time bound is on the command's CPU time
(the machine running the suite may be loaded by other work; a command that launched ranks or ran a
model would use far more).
"""

import glob
import json
import os
import resource
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

CPU_SECONDS = 10.0


def run_cli(*args, env=None, cwd=ROOT, timeout=120):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "tensorrt_llm_dwdp", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=dict(os.environ, **(env or {})))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc, cpu


def one_line_error(*args, names, env=None, cwd=ROOT):
    """Run the command; assert exit 2, exactly one line of output that names `names`; return the line."""
    proc, cpu = run_cli(*args, env=env, cwd=cwd)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert out.count("\n") == 1 and out.endswith("\n"), out
    assert names in out, out
    assert "Traceback" not in out and "error:" in out, out
    assert cpu < CPU_SECONDS, f"{cpu:.1f} s of CPU for {args}"
    return out.strip()


VERIFY = {
    "backwards placement range": (["--placement", "7-0;0-15"], "--placement"),
    "empty rank in a placement": (["--placement", "0-15;"], "rank 1 lists no experts"),
    "no steps": (["--steps", "0"], "--steps"),
    "top-k above the experts": (["--top-k", "20"], "top_k"),
    "top-k beyond the kept groups": (["--top-k", "9"], "top_k"),
    "negative hidden": (["--hidden", "-64"], "hidden"),
    "stall rank outside the world": (["--stall-rank", "9"], "--stall-rank"),
    "die rank outside the world": (["--die-rank", "2"], "--die-rank"),
    "stall with one step": (["--stall-rank", "1", "--steps", "1"], "--steps"),
    "one slot": (["--depth", "1"], "--depth"),
    "tiny slice": (["--slice-bytes", "100"], "--slice-bytes"),
    "group size not dividing": (["--group-size", "3"], "--group-size"),
    "redundant without a count": (["--placement", "redundant"], "--experts-per-rank"),
    "fp8 with small shapes": (["--dtype", "float8_e4m3fn"], "128"),
    "token list": (["--tokens", "3,x"], "--tokens"),
    "unknown choice": (["--routing", "nonsense"], "--routing"),
    "unknown option": (["--num-expertz", "8"], "--num-expertz"),
    "abbreviated option": (["--step", "2"], "--step"),
    "unwritable json": (["--json", "/etc/hostname/r.json"], "--json"),
}


@pytest.mark.parametrize("case", sorted(VERIFY))
def test_verify_bad_input(case):
    args, names = VERIFY[case]
    one_line_error("verify", "--ranks", "2", *args, names=names)


def test_verify_ranks_zero():
    one_line_error("verify", "--ranks", "0", names="--ranks")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA backend is valid on a GPU machine")
def test_verify_cuda_backend_on_a_cpu_machine():
    line = one_line_error("verify", "--ranks", "2", "--backend", "cuda_ipc", names="--backend")
    assert "cpu_shm" in line


BENCH = {
    "unknown preset": (["--preset", "deepseek-v4"], "--preset"),
    "bad isl": (["--isl", "foo"], "--isl"),
    "no layers": (["--layers", "0"], "--layers"),
    "more layers than the model": (["--layers", "99"], "--layers"),
    "cv sweep words": (["--cv-sweep", "a,b"], "--cv-sweep"),
    "cv sweep out of range": (["--cv-sweep", "0,-1"], "--cv-sweep"),
    "no ranks": (["--ranks", "0"], "--ranks"),
    "unknown mode": (["--modes", "dwdp,fast"], "--modes"),
    "one slot": (["--depth", "1"], "--depth"),
    "negative slice": (["--slice-mib", "-1"], "--slice-mib"),
    "group size not dividing": (["--group-size", "3"], "--group-size"),
    "unknown sim machine": (["--sim-machine", "h900"], "--sim-machine"),
    "no requests": (["--requests", "0"], "--requests"),
    "unknown option": (["--isl-cv", "0.2"], "--isl-cv"),
    "abbreviated option": (["--warm", "0"], "--warm"),
    "unwritable json": (["--json", "/etc/hostname/b.json"], "--json"),
    "unwritable plot dir": (["--plot-dir", "/etc/hostname/plots"], "--plot-dir"),
}


@pytest.mark.parametrize("case", sorted(BENCH))
def test_bench_bad_input(case):
    args, names = BENCH[case]
    one_line_error("bench", *args, names=names)


def test_bench_auto_beyond_the_machine_names_the_runtime_option():
    """The performance model's limit is reported with bench's flag (--sim-machine), not the simulator's."""
    line = one_line_error("bench", "--ranks", "16", "--modes", "auto", names="--sim-machine")
    assert "--machine" not in line.replace("--sim-machine", "")


def test_bench_trace_with_cv_sweep(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"isl": 64}\n{"isl": 32}\n')
    one_line_error("bench", "--trace", str(trace), "--cv-sweep", "0,0.2", names="--cv-sweep")
    trace.write_text('{"len": 3}\n')
    one_line_error("bench", "--trace", str(trace), names="--trace")


def _checkpoint(tmp_path, drop_key=None, truncate=False, **set_keys):
    """A small DeepSeek-architecture checkpoint (the tiny preset's shapes) with real tensor names."""
    from tensorrt_llm_dwdp.runtime import Decoder, preset
    from tensorrt_llm_dwdp.runtime.checkpoint import save_hf
    hf = {"model_type": "deepseek_v3", "vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 3,
          "first_k_dense_replace": 1, "intermediate_size": 128, "n_routed_experts": 16, "num_experts_per_tok": 4,
          "moe_intermediate_size": 32,
          "n_shared_experts": 1, "num_attention_heads": 4, "topk_method": "noaux_tc", "n_group": 4, "topk_group": 2,
          "routed_scaling_factor": 2.5, "norm_topk_prob": True, "q_lora_rank": 48, "kv_lora_rank": 32,
          "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16}
    path = tmp_path / "ckpt"
    save_hf(Decoder.build(preset("tiny"), int.from_bytes(os.urandom(2), "little")), str(path), hf)
    if drop_key or set_keys:
        hf.pop(drop_key, None)
        (path / "config.json").write_text(json.dumps(dict(hf, **set_keys)))
    if truncate:
        f = path / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return path


def test_bench_checkpoint_missing_key(tmp_path):
    line = one_line_error("bench", "--checkpoint", str(_checkpoint(tmp_path, drop_key="num_experts_per_tok")),
                          names="--checkpoint")
    assert "num_experts_per_tok" in line and "config.json" in line


@pytest.mark.parametrize("key,value", [("vocab_size", None), ("hidden_size", 64.0), ("model_type", "mixtral"),
                                       ("rope_scaling", {"type": "linear", "factor": 4.0}),
                                       ("scoring_func", "softmax")])
def test_bench_checkpoint_unsupported_config(tmp_path, key, value):
    """A config.json the decoder does not compute is refused before any rank starts, naming key and value."""
    line = one_line_error("bench", "--checkpoint", str(_checkpoint(tmp_path, **{key: value})), names="--checkpoint")
    assert key in line and (repr(value) in line or "linear" in line), line


def test_bench_fp8_dispatch_for_a_bf16_checkpoint(tmp_path):
    """The launcher reads the experts' dtype from the checkpoint's headers: FP8 dispatch rows for BF16 experts are
    refused before any rank starts."""
    line = one_line_error("bench", "--checkpoint", str(_checkpoint(tmp_path)), "--dep-dispatch", "fp8",
                          names="--dep-dispatch fp8")
    assert "the experts are bfloat16" in line and "an FP8 checkpoint" in line, line


def test_bench_checkpoint_truncated_file(tmp_path):
    line = one_line_error("bench", "--checkpoint", str(_checkpoint(tmp_path, truncate=True)), names="--checkpoint")
    assert "model.safetensors" in line


def test_bench_kernels_bad_input():
    one_line_error("bench", "kernels", "--sections", "a,z", names="--sections")
    one_line_error("bench", "kernels", "--tokens", "4096,lots", names="--tokens")
    one_line_error("bench", "kernels", "--shapes", "llama", names="--shapes")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the kernels run on a GPU machine")
def test_bench_kernels_on_a_cpu_machine():
    one_line_error("bench", "kernels", names="CUDA GPU")


def test_sim_bad_input():
    one_line_error("sim", "--slice-mib", "-1", names="--slice-mib")
    one_line_error("sim", "--ranks", "many", names="--ranks")


def test_sim_compare_names_the_preset_it_cannot_model(tmp_path):
    """The JSON of the README's CPU run (preset tiny) gets one line saying what compare can take."""
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"config": {"preset": "tiny", "ranks": 4, "isl": "normal:128:0.2",
                                            "max_num_tokens": 512}, "modes": {}}))
    line = one_line_error("sim", "compare", str(bench), names="'tiny'")
    assert "qwen3-30b-a3b" in line


# The launch wrapper checks values, not only names and types, with DwdpConfig's rules.
LAUNCH = {
    "one slot": ({"prefetch_depth": 1}, "dwdp.prefetch_depth"),
    "tiny slice": ({"slice_bytes": 100}, "dwdp.slice_bytes"),
    "float slice": ({"slice_bytes": 32e6}, "integer"),
    "empty group": ({"group_size": 0}, "dwdp.group_size"),
    "unknown backend": ({"memory_backend": "nvshmem"}, "dwdp.memory_backend"),
    "bad isl": ({"mode": "auto", "isl": "long"}, "dwdp.isl"),
}


@pytest.mark.parametrize("case", sorted(LAUNCH))
def test_launch_dry_run_checks_values_and_leaves_no_files(case, tmp_path):
    import yaml
    section, names = LAUNCH[case]
    opts = tmp_path / "opts.yaml"
    opts.write_text(yaml.safe_dump({"max_num_tokens": 8192, "dwdp": section}))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    line = one_line_error("launch", "--dry-run", "--", "trtllm-serve", "model", "--config", str(opts), names=names,
                          env={"TMPDIR": str(tmp)})
    assert line.startswith("trtllm-dwdp launch: error:")
    assert list(tmp.iterdir()) == []


def test_launch_inline_negative_group_size():
    line = one_line_error("launch", "--dry-run", "--", "trtllm-serve", "model", env={"TRTLLM_DWDP": "group_size=-3"},
                          names="dwdp.group_size")
    assert "positive integer" in line and "must be an integer" not in line


def test_launch_dry_run_removes_its_option_copy(tmp_path):
    import yaml
    opts = tmp_path / "opts.yaml"
    opts.write_text(yaml.safe_dump({"max_num_tokens": 8192, "dwdp": {"prefetch_depth": 3}}))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc, _ = run_cli("launch", "--dry-run", "--", "trtllm-serve", "model", "--config", str(opts),
                      env={"TMPDIR": str(tmp)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the command it would run points at a filtered copy, named as one (not as a file that is gone)...
    assert "<trtllm-dwdp-options copy, written at launch>" in proc.stdout
    assert list(tmp.iterdir()) == []  # ...which a dry run does not leave behind


def test_launch_unknown_own_option():
    one_line_error("launch", "--dryrun", "--", "trtllm-serve", "model", names="--dryrun")


def test_doctor_extra_argument():
    one_line_error("doctor", "--json", names="--json")


# What only a rank can find: the launcher shows the first rank's error in one line and keeps the logs.
RANK_FAILS = """
import sys
from tensorrt_llm_dwdp.bootstrap import run_or_abort

def job():
    from mpi4py import MPI
    rank = MPI.COMM_WORLD.Get_rank()
    print(f"rank {rank}: step 1/2", flush=True)
    if rank == 1:
        raise ValueError("--widgets 7: rank 1 found too many widgets. Fix: fewer widgets.")
    MPI.COMM_WORLD.Barrier()
    return 0

sys.exit(run_or_abort(job))
"""

WARNS_THEN_SUCCEEDS = """
from mpi4py import MPI
r = MPI.COMM_WORLD.Get_rank()
if r == 0:
    print("-" * 74, flush=True)
    print("WARNING: a harmless MPI notice", flush=True)
    print("-" * 74, flush=True)
MPI.COMM_WORLD.Barrier()
print(f"rank {r} done", flush=True)
"""

DIES = """
import os
from mpi4py import MPI
if MPI.COMM_WORLD.Get_rank() == 1:
    os._exit(3)  # no traceback, no error line
MPI.COMM_WORLD.Barrier()
"""

SLEEPS = """
import time
from mpi4py import MPI
print(f"rank {MPI.COMM_WORLD.Get_rank()} sleeping", flush=True)
time.sleep(300)
"""


def _launcher(tmp_path, script, timeout=None):
    (tmp_path / "job.py").write_text(script)
    code = ("import sys; from tensorrt_llm_dwdp.commands.mpirun import run_ranks; "
            f"sys.exit(run_ranks(2, [{str(tmp_path / 'job.py')!r}], timeout_s={timeout!r}, prog='test-job'))")
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=180)


@pytest.mark.mpi
def test_a_rank_error_is_one_line_with_the_log_path(tmp_path):
    pytest.importorskip("mpi4py")
    proc = _launcher(tmp_path, RANK_FAILS)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stdout + proc.stderr and "MPI_ABORT" not in proc.stdout + proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr
    assert err[0].startswith("test-job: error: rank 1: --widgets 7: rank 1 found too many widgets"), err
    log = glob.glob(str(tmp_path / "test-job-*.log"))
    assert len(log) == 1 and log[0] in err[0]
    text = open(log[0]).read()
    assert "Traceback" in text and "rank 0: step 1/2" in text  # the full output is kept
    assert "step 1/2" in proc.stdout  # progress before the failure still streamed


@pytest.mark.mpi
def test_a_rank_that_dies_silently_is_named(tmp_path):
    pytest.importorskip("mpi4py")
    proc = _launcher(tmp_path, DIES)
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "rank 1 exited with code 3" in err[0], proc.stderr


@pytest.mark.mpi
def test_a_timeout_stops_every_rank_in_one_line(tmp_path):
    pytest.importorskip("mpi4py")
    proc = _launcher(tmp_path, SLEEPS, timeout=8)
    assert proc.returncode == 124
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "--timeout 8" in err[0], proc.stderr
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "job.py")], capture_output=True, text=True).stdout
    assert left == "", f"ranks still running: {left}"


@pytest.mark.mpi
def test_a_banner_in_a_successful_run_is_still_shown(tmp_path):
    pytest.importorskip("mpi4py")
    proc = _launcher(tmp_path, WARNS_THEN_SUCCEEDS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "harmless MPI notice" in proc.stdout and "rank 0 done" in proc.stdout and "rank 1 done" in proc.stdout
    assert proc.stderr == "" and glob.glob(str(tmp_path / "test-job-*.log")) == []


def test_dwdp_beyond_the_machine_warns_in_the_runtime_options_words():
    """Mode dwdp runs on a world the performance model cannot judge (16 CPU ranks): a warning, not a failure."""
    from tensorrt_llm_dwdp.runtime import preset
    from tensorrt_llm_dwdp.bench.auto import choose
    d = choose(preset("tiny"), 16, "normal:128:0.2", 512, requested="dwdp", machine="h200")
    assert d.mode == "dwdp" and d.speedup is None and "--sim-machine" in d.warning
    with pytest.raises(ValueError, match="--sim-machine"):
        choose(preset("tiny"), 16, "normal:128:0.2", 512, requested="auto", machine="h200")


@pytest.mark.mpi
def test_bench_header_and_table_name_the_checkpoint_and_the_trace(tmp_path):
    """With --checkpoint and --trace, progress and table name them (not the default preset and ISL), and
    --json into a folder that does not exist yet is written."""
    pytest.importorskip("mpi4py")
    trace = tmp_path / "reqs.jsonl"
    trace.write_text("".join(f'{{"isl": {n}}}\n' for n in (40, 17, 64, 23)))
    out = tmp_path / "new" / "b.json"
    proc = subprocess.run([sys.executable, "-m", "tensorrt_llm_dwdp", "bench", "--ranks", "2", "--modes", "local",
                           "--checkpoint", str(_checkpoint(tmp_path)), "--trace", str(trace), "--warmup", "0",
                           "--json", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "checkpoint" in proc.stdout and "preset tiny" not in proc.stdout, proc.stdout
    assert "trace reqs.jsonl" in proc.stdout.split("TPS/GPU")[-1] and "normal:128" not in proc.stdout, proc.stdout
    assert json.loads(out.read_text())["modes"]["local"]["tokens_per_s_per_gpu"] > 0
