"""The front door: the README's commands as written, bad input of every kind at every option, and signals.

- Every case of a fresh-clone trial that once hung, forked without bound, printed a traceback or was
  silently accepted is run as a command (a subprocess) and must answer in time with one line naming the
  option, or run correctly.
- A fuzz over every option of every command (found from the commands' own parsers, so a new option is
  covered without editing this file), the options file and the environment variable: each value answers
  within 10 s with exit code 2, a few lines, no traceback, naming the option, or is accepted (bench and
  verify with --dry-run, so accepted values start no rank; sim runs for real).
- SIGINT, SIGTERM and SIGHUP to a launcher end mpirun and every rank and leave nothing but the named log.
- The README's bash commands run as written in a fresh temporary folder.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from tensorrt_llm_dwdp.commands.mpirun import MPI_BACKING_VARS

ANSWER_S = 10.0


def cli(*args, cwd=ROOT, env=None, timeout=60):
    """Run `trtllm-dwdp ARGS` as a user would (a fresh interpreter); (CompletedProcess, wall seconds)."""
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "tensorrt_llm_dwdp", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=dict(os.environ, **(env or {})))
    return proc, time.time() - start


def assert_one_line(proc, seconds, names):
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out and out.count("\n") <= 3, out
    assert names in out, out
    assert seconds < ANSWER_S, f"{seconds:.1f} s: {out}"


# ---- the cases of the fresh-clone trial, as commands ----------------------------------------------------------

def _trace(tmp_path, text):
    p = tmp_path / "t.jsonl"
    p.write_text(text)
    return str(p)


ISSUE_CASES = {
    "nan isl cv": (["bench", "--isl", "normal:128:nan"], "--isl"),
    "nan isl cv, sim": (["sim", "--isl", "normal:128:nan"], "--isl"),
    "nan in cv sweep": (["bench", "--cv-sweep", "0,nan"], "--cv-sweep"),
    "isl 1e8": (["bench", "--isl", "100000000"], "--isl"),
    "sim huge budget": (["sim", "--max-num-tokens", "1000000000000"], "--max-num-tokens"),
    "README isl beside a large budget": (["bench", "--isl", "8192", "--max-num-tokens", "10000000"], "--max-num-tokens"),
    "bench huge budget": (["bench", "--max-num-tokens", "1000000000000"], "--max-num-tokens"),
    "bench 100000 ranks": (["bench", "--ranks", "100000"], "--ranks"),
    "verify 100000 ranks": (["verify", "--ranks", "100000"], "--ranks"),
    "sim json into a folder": (["sim", "--json", "{tmp}"], "--json"),
    "infinite request rate": (["bench", "--request-rate", "inf"], "--request-rate"),
    "empty placement item": (["verify", "--placement", "0-3,,4;5-15"], "--placement"),
    "isl beyond the budget": (["bench", "--isl", "600"], "--max-num-tokens"),
    "trace isl 1e12": (["bench", "--trace", "{trace_huge}"], "--trace"),
    "missing trace": (["bench", "--trace", "missing.jsonl"], "--trace"),
    "explain plot is a folder": (["sim", "--explain", "--plot", "{tmp}"], "--plot"),
    "launch missing config": (["launch", "--dry-run", "--", "trtllm-serve", "m", "--config", "missing.yaml"], "--config"),
    # values that used to be taken for "not given" or that run without end
    "empty checkpoint path": (["bench", "--checkpoint", ""], "--checkpoint"),
    "empty trace path": (["bench", "--trace", ""], "--trace"),
    "empty cv sweep": (["bench", "--cv-sweep", ""], "--cv-sweep"),
    "bench group size 0": (["bench", "--group-size", "0"], "--group-size"),
    "verify group size 0": (["verify", "--group-size", "0"], "--group-size"),
    "verify steps without end": (["verify", "--steps", "99999999999999999999"], "--steps"),
    "verify huge token count": (["verify", "--max-tokens", "99999999999999999999"], "--max-tokens"),
    "verify negative seed": (["verify", "--seed", "-1"], "--seed"),
    "verify endless stall": (["verify", "--stall-rank", "1", "--stall-seconds", "1e308"], "--stall-seconds"),
    "sim compare empty calibration": (["sim", "compare", "{tmp}/b.json", "--calibration", ""], "--calibration"),
    "checkpoint with a null vocab_size": (["bench", "--checkpoint", "{ckpt_null_vocab}"], "vocab_size"),
    "checkpoint with a float hidden_size": (["bench", "--checkpoint", "{ckpt_float_hidden}"], "hidden_size"),
}


def _config_only_checkpoint(tmp_path, name, **change):
    """A DeepSeek-V3 config.json (the tiny preset's shapes) with `change` applied, and no weights: the launcher
    must refuse the config before it looks for them."""
    hf = {"model_type": "deepseek_v3", "vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 3,
          "first_k_dense_replace": 1, "intermediate_size": 128, "n_routed_experts": 16, "num_experts_per_tok": 4,
          "moe_intermediate_size": 32, "n_shared_experts": 1, "num_attention_heads": 4, "topk_method": "noaux_tc",
          "n_group": 4, "topk_group": 2, "routed_scaling_factor": 2.5, "norm_topk_prob": True, "q_lora_rank": 48,
          "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16}
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps(dict(hf, **change)))
    return str(path)


@pytest.mark.parametrize("case", sorted(ISSUE_CASES))
def test_a_case_of_the_trial_answers_in_one_line(case, tmp_path):
    args, names = ISSUE_CASES[case]
    subs = {"tmp": str(tmp_path), "trace_huge": _trace(tmp_path, '{"isl": 1e12}\n'),
            "ckpt_null_vocab": _config_only_checkpoint(tmp_path, "null_vocab", vocab_size=None),
            "ckpt_float_hidden": _config_only_checkpoint(tmp_path, "float_hidden", hidden_size=64.0)}
    proc, seconds = cli(*[a.format(**subs) for a in args], cwd=tmp_path)
    assert_one_line(proc, seconds, names)


def test_sim_writes_json_and_plot_into_folders_it_creates(tmp_path):
    proc, _ = cli("sim", "--iterations", "2", "--json", "new/a/s.json", "--explain", "--plot", "new/b/p.png",
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "new/a/s.json").read_text())["speedup"] > 0
    assert (tmp_path / "new/b/p.png").stat().st_size > 0 and "plot written to new/b/p.png" in proc.stdout


def test_sim_plot_without_a_file_type_is_refused(tmp_path):
    proc, seconds = cli("sim", "--explain", "--plot", "out/plot", cwd=tmp_path)
    assert_one_line(proc, seconds, "--plot")
    assert not (tmp_path / "out").exists()


def test_verify_json_into_a_new_folder_is_accepted_before_the_run(tmp_path):
    proc, _ = cli("verify", "--ranks", "2", "--json", "new/v.json", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0 and "nothing was run" in proc.stdout, proc.stderr


def test_launch_dry_run_names_no_file_it_did_not_keep(tmp_path):
    opts = tmp_path / "o.yaml"
    opts.write_text("dwdp: {}\nmax_num_tokens: 8192\n")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc, _ = cli("launch", "--dry-run", "--", "trtllm-serve", "m", "--config", str(opts), env={"TMPDIR": str(tmp)})
    assert proc.returncode == 0, proc.stderr
    for path in re.findall(r"(/\S+\.yaml)", proc.stdout):
        assert os.path.exists(path), f"{path} is printed but does not exist: {proc.stdout}"
    assert not os.listdir(tmp)


def test_a_bad_environment_variable_is_silent_outside_tensorrt_llm():
    """TRTLLM_DWDP=garbage must not make every Python process print (pip, a test runner); `import tensorrt_llm`
    is where it fails (test_trtllm_activation)."""
    proc = subprocess.run([sys.executable, "-c", "print('ok')"], capture_output=True, text=True,
                          env=dict(os.environ, TRTLLM_DWDP="garbage"))
    assert proc.returncode == 0 and proc.stdout == "ok\n" and proc.stderr == "", proc.stderr


def test_sim_help_describes_itself_in_whole_sentences():
    proc, _ = cli("sim", "--help")
    text = " ".join(proc.stdout.split())
    assert "predicted TPS/GPU of DWDP and DEP for a deployment, the speedup and the crossover;" in text
    assert "writes a plot." in text


def test_gpu_check_on_a_machine_without_a_gpu_stops_before_building(tmp_path):
    import shutil
    if shutil.which("nvidia-smi") and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0:
        pytest.skip("this machine has a GPU")
    start = time.time()
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_core_check.sh"), "test"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no NVIDIA GPU" in proc.stderr, proc.stderr
    assert time.time() - start < ANSWER_S and not os.listdir(tmp_path)


# ---- fuzz --------------------------------------------------------------------------------------------------------

INT_VALUES = ("nan", "inf", "-1", "0", "1e12", "99999999999999999999", "abc", "", "\u0663", "1.5")
FLOAT_VALUES = ("nan", "inf", "-inf", "-1", "0", "1e-300", "1e308", "abc", "")
TEXT_VALUES = ("", "nan", "-1", "0", "1e12", "\u00fcn\u00ef\u2202", ",", ";", "{dir}", "{missing}", "{file}",
               "{unwritable}")
PATH_OPTIONS = {"--json", "--plot-dir", "--plot", "--trace", "--checkpoint", "--calibration"}


def _values(action):
    if action.choices:
        return ("nonsense", "", "\u00fcn\u00ef")
    if action.type is int:
        return INT_VALUES
    if action.type is float:
        return FLOAT_VALUES
    return TEXT_VALUES


def _option_cases(parser, base, skip=()):
    """One case per (option, value): `base` (a dict of option -> value, or None for a flag) with that option
    replaced."""
    cases = []
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0 or action.dest == "help":
            continue
        opt = action.option_strings[0]
        if opt in skip:
            continue
        rest = [x for k, v in base.items() if k != opt for x in ([k] if v is None else [k, v])]
        for value in _values(action):
            cases.append({"option": opt, "argv": rest + [opt, value]})
    return cases


def _fill(value, paths):
    return value.format(**paths) if "{" in value else value


def _commands(paths, bench_json):
    from tensorrt_llm_dwdp.bench.kernels import build_parser as kernels_parser
    from tensorrt_llm_dwdp.bench.command import parser as bench_parser
    from tensorrt_llm_dwdp.sim.cli import build_parser as sim_parser
    from tensorrt_llm_dwdp.sim.compare import build_parser as compare_parser
    from tensorrt_llm_dwdp.commands.usage import Parser
    from tensorrt_llm_dwdp.verify.job import build_parser as verify_parser

    import torch
    gpu_line = None if torch.cuda.is_available() else "no CUDA GPU is visible"
    verify_own = Parser(prog="verify")
    verify_own.add_argument("--ranks", type=int)
    verify_own.add_argument("--timeout", type=float)
    out = {}
    out["bench"] = [dict(c, argv=["bench"] + c["argv"] + ["--dry-run"])
                    for c in _option_cases(bench_parser(), {"--ranks": "2", "--requests": "4"})]
    out["verify"] = [dict(c, argv=["verify"] + c["argv"] + ["--dry-run"])
                     for p in (verify_own, verify_parser()) for c in _option_cases(p, {"--ranks": "2"})]
    out["sim"] = [dict(c, argv=["sim"] + c["argv"]) for c in _option_cases(sim_parser(), {"--iterations": "2"})]
    out["sim compare"] = [dict(c, argv=["sim", "compare", bench_json] + c["argv"])
                          for c in _option_cases(compare_parser(), {})]
    out["sim compare"] += [{"option": "bench_json", "argv": ["sim", "compare", v]} for v in TEXT_VALUES]
    out["bench kernels"] = [dict(c, argv=["bench", "kernels"] + c["argv"], accepted_if=gpu_line)
                            for c in _option_cases(kernels_parser(), {})]
    for cases in out.values():
        for c in cases:
            c["argv"] = [_fill(a, paths) for a in c["argv"]]
    return out


LAUNCH_KEY_VALUES = (None, "", "nan", -1, 0, 10**12, 1.5, "abc", [1, 2], {"a": 1}, True, "\u00fcn\u00ef")


def _launch_cases(tmp_path):
    import yaml
    from tensorrt_llm_dwdp.integrations.trtllm.options import KEYS
    cases = []
    for i, (key, value) in enumerate((k, v) for k in KEYS for v in LAUNCH_KEY_VALUES):
        path = tmp_path / f"opts{i}.yaml"
        path.write_text(yaml.safe_dump({"max_num_tokens": 8192, "dwdp": {key: value}}))
        cases.append({"option": f"dwdp.{key}", "argv": ["launch", "--dry-run", "--", "trtllm-serve", "m", "--config",
                                                         str(path)]})
    for text in ("garbage", "", "nan", "group_size=-1", "group_size=", "=4", "prefetch_depth=1e12",
                 "placement=0-3,,4", "slice_bytes=1e400", "\u00fcn\u00ef=1", "enable=maybe"):
        cases.append({"option": "TRTLLM_DWDP", "env": {"TRTLLM_DWDP": text},
                      "argv": ["launch", "--dry-run", "--", "trtllm-serve", "m"]})
    for raw in ("dwdp: [", "dwdp: 3", "- a\n- b", "\x00\x01", "dwdp:\n  group_size: !!python/object:os.system x"):
        path = tmp_path / f"raw{len(cases)}.yaml"
        path.write_text(raw)
        cases.append({"option": path.name, "argv": ["launch", "--dry-run", "--", "trtllm-serve", "m", "--config",
                                                      str(path)]})
    return cases


def _run_worker(cases, cwd, env=None):
    worker = os.path.join(ROOT, "tests", "fuzz_cli_worker.py")
    proc = subprocess.run([sys.executable, worker], input=json.dumps(cases), capture_output=True, text=True, cwd=cwd,
                          timeout=60 + 15 * len(cases), env=dict(os.environ, TMPDIR=str(cwd), **(env or {})))
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(cases), f"the worker stopped after {len(results)} of {len(cases)}: {proc.stderr[-3000:]}"
    return results


def _judge(case, res):
    """Why this answer is not acceptable, or None."""
    out, option = res["out"], case["option"]
    if res["hung"]:
        return "no answer within 10 s"
    if res["seconds"] > ANSWER_S:
        return f"answered after {res['seconds']:.1f} s"
    if "Traceback" in out:
        return "traceback"
    if res["rc"] == 0:
        return None
    if case.get("accepted_if") and case["accepted_if"] in out and res["rc"] == 2 and out.count("\n") <= 1:
        return None  # every option accepted; this machine cannot run the command, and says so in one line
    if res["rc"] != 2:
        return f"exit code {res['rc']}"
    if out.count("\n") > 3:
        return f"{out.count(chr(10))} lines"
    names = {option, option.replace("dwdp.", "")} if option != "bench_json" else {"bench", "json", ".json"}
    if not any(n in out for n in names):
        return f"the answer does not name {option}"
    return None


@pytest.fixture(scope="module")
def fuzz_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "dir").mkdir()
    (root / "file.txt").write_text("not what any option expects\n\u00ff\n")
    bench = root / "bench.json"
    bench.write_text(json.dumps({"config": {"preset": "qwen3-30b-a3b", "ranks": 2, "isl": "normal:2048:0.2",
                                            "max_num_tokens": 8192, "layers": 4, "slice_mib": 32},
                                 "modes": {"dwdp": {"tokens_per_s_per_gpu": 100.0, "iterations": 16},
                                           "dep": {"tokens_per_s_per_gpu": 90.0, "iterations": 16,
                                                   "wait_fraction": 0.2}},
                                 "speedup_dwdp_over_dep": 1.1}))
    paths = {"dir": str(root / "dir"), "missing": str(root / "missing" / "x.json"), "file": str(root / "file.txt"),
             "unwritable": "/proc/version/x.json"}
    return root, paths, str(bench)


@pytest.mark.parametrize("command", ["bench", "verify", "sim", "sim compare", "bench kernels", "launch"])
def test_fuzz_every_option(command, fuzz_paths):
    root, paths, bench_json = fuzz_paths
    cases = _launch_cases(root) if command == "launch" else _commands(paths, bench_json)[command]
    results = _run_worker(cases, root)
    bad = [f"{' '.join(c['argv'])} {c.get('env', '')}: {why}\n    {r['out'].strip()[-400:]}"
           for c, r in zip(cases, results) for why in [_judge(c, r)] if why]
    assert not bad, f"{len(bad)} of {len(cases)} answers are not acceptable:\n" + "\n".join(bad)
    assert any(r["rc"] == 2 for r in results)  # the fuzz reached the checks


# ---- signals -----------------------------------------------------------------------------------------------------

def _descendants(pid):
    kids = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            if k not in out:
                out.add(k)
                todo.append(k)
    return out


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _launcher_env(**extra):
    """The test's environment without the folder conftest gives MPI's backing files: the launcher's own job
    folder, and its removal after any ending, is what these tests check."""
    return dict({k: v for k, v in os.environ.items() if k not in MPI_BACKING_VARS}, **extra)


def _shm_names():
    return {n for n in os.listdir("/dev/shm") if n.startswith(("dwdp-", "trtllm-dwdp-"))} if os.path.isdir("/dev/shm") \
        else set()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_ends_every_rank_and_leaves_only_the_named_log(sig, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    shm_before = _shm_names()
    proc = subprocess.Popen([sys.executable, "-m", "tensorrt_llm_dwdp", "bench", "--ranks", "2", "--requests",
                             "100000", "--modes", "dwdp"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_launcher_env(TMPDIR=str(tmp)))
    ranks = set()
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # until the ranks have started and set up
        ranks |= _descendants(proc.pid)
        if len(ranks) >= 3 and any(n.startswith("trtllm-dwdp-") for n in os.listdir(tmp)):
            time.sleep(4)
            ranks |= _descendants(proc.pid)
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, out + err
    time.sleep(0.5)
    assert len(ranks) >= 3 and not [p for p in ranks if _alive(p)], f"left running: {ranks}"
    line = err.strip().splitlines()[-1]
    assert "every rank was stopped" in line and "Traceback" not in err, err
    logs = re.findall(r"\(their output: (\S+)\)", line)
    assert sorted(os.listdir(tmp)) == sorted(os.path.basename(p) for p in logs), (os.listdir(tmp), line)
    assert _shm_names() <= shm_before


def test_a_timeout_with_nothing_printed_names_no_log(tmp_path):
    """A job stopped before a rank wrote anything keeps no empty log."""
    from tensorrt_llm_dwdp.commands.mpirun import run_ranks
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    script = tmp_path / "sleep.py"
    script.write_text("import time\ntime.sleep(60)\n")
    env = dict(os.environ, TMPDIR=str(tmp))
    proc = subprocess.run([sys.executable, "-c", "import sys; from tensorrt_llm_dwdp.commands.mpirun import run_ranks; "
                           f"sys.exit(run_ranks(2, [{str(script)!r}], timeout_s=3))"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 124 and "--timeout 3" in proc.stderr, proc.stderr
    assert "output:" not in proc.stderr and os.listdir(tmp) == [], (proc.stderr, os.listdir(tmp))
    assert run_ranks  # imported in this process too: the module is importable without side effects


# ---- the README, as written --------------------------------------------------------------------------------------

def readme_commands():
    """The commands of the README's bash blocks that run on this machine as they stand (continuations joined):
    `trtllm-dwdp` commands and the shell lines that make their inputs. Installs, the test command and the
    TensorRT-LLM launches (they need a TensorRT-LLM deployment) are left out."""
    text = open(os.path.join(ROOT, "README.md")).read()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith(("trtllm-dwdp ", "printf ")) and not line.startswith("trtllm-dwdp launch"):
                cmds.append(line)
    return cmds


def test_the_readme_commands_run_as_written_in_a_fresh_folder(tmp_path):
    cmds = readme_commands()
    main = next(c for c in cmds if c.startswith("trtllm-dwdp bench --preset tiny"))
    assert "out/plots" in main and "out/bench.json" in main  # relative paths into folders that do not exist yet
    assert len(cmds) >= 8, cmds
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    for cmd in cmds:
        start = time.time()
        proc = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        assert "Traceback" not in proc.stderr, f"{cmd}\n{proc.stderr[-2000:]}"
        print(f"{time.time() - start:6.1f} s  {cmd}")
        if cmd == main:
            res = json.loads((tmp_path / "out" / "bench.json").read_text())
            assert res["config"]["json"] == "out/bench.json"
            assert (tmp_path / "out" / "plots" / "timeline.png").stat().st_size > 0
            assert "DWDP/DEP" in proc.stdout
    assert (tmp_path / "out" / "sweep" / "speedup_vs_cv.png").stat().st_size > 0


def test_the_bench_launcher_checks_and_starts_without_torch():
    """The launcher answers bad input, and gets as far as the mpirun command line, without importing torch (1-3 s
    on a 2-core machine): the ranks import it, the launcher need not."""
    code = ("import sys, contextlib, io\n"
            "from tensorrt_llm_dwdp.commands.main import main\n"
            "with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):\n"
            "    bad = main(['bench', '--requests', '0'])\n"
            "    dry = main(['bench', '--ranks', '2', '--modes', 'dwdp,dep,local', '--dry-run'])\n"
            "print(bad, dry, 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["2", "0", "False"], proc.stdout + proc.stderr


def test_no_mpirun_is_one_line_and_leaves_no_job_folder(tmp_path):
    """A machine without MPI on PATH: one line saying so, and the job's private folders are not left behind."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    bindir = os.path.dirname(sys.executable)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and p != bindir and not os.path.exists(os.path.join(p, "mpirun"))
                           and not os.path.exists(os.path.join(p, "mpiexec")))
    shm_before = _shm_names()
    proc, seconds = cli("bench", "--ranks", "2", "--requests", "2", cwd=tmp_path,
                        env={"PATH": path, "TMPDIR": str(tmp)})
    assert_one_line(proc, seconds, "mpirun")
    assert os.listdir(tmp) == [] and _shm_names() <= shm_before
