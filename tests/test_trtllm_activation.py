"""The activation hook: the .pth line at interpreter start-up, in fresh processes, and its installation."""

import os
import shutil
import site
import subprocess
import sys

import pytest

import trtllm_fakes as fk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PTH = os.path.join(ROOT, "tensorrt_llm_dwdp", "integrations", "trtllm", "tensorrt_llm_dwdp_trtllm.pth")


def _start(tmp_path, code, env_vars, pythonpath_first=()):
    """python -S (no installed .pth runs), then the repository's .pth processed as site.addsitedir would."""
    pth_dir = tmp_path / "site"
    pth_dir.mkdir(exist_ok=True)
    shutil.copy(PTH, pth_dir)
    fake = fk.write_fake_package(str(tmp_path / "fake"))
    path = [*pythonpath_first, fake, ROOT, os.path.join(ROOT, "tests"), *site.getsitepackages()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRTLLM_DWDP")}
    env.update(env_vars, PYTHONPATH=os.pathsep.join(path))
    prog = f"import site, sys; site.addsitedir({str(pth_dir)!r}); print('started'); {code}"
    return subprocess.run([sys.executable, "-S", "-c", prog], capture_output=True, text=True, env=env, timeout=120,
                          cwd=tmp_path)  # not the repository: sys.path[0] is the working directory


def test_without_the_variables_nothing_is_imported(tmp_path):
    proc = _start(tmp_path, "print(sorted(m for m in sys.modules if m.startswith(('tensorrt_llm', 'torch'))))", {})
    assert proc.returncode == 0 and proc.stdout.split("\n")[1] == "[]" and proc.stderr == ""


def test_the_hook_patches_tensorrt_llm_when_it_is_imported(tmp_path):
    code = ("import tensorrt_llm.llmapi.llm_utils as u; "
            "print(u.update_llm_args_with_extra_dict({'model': 'm'}, {'dwdp': {'group_size': 2}}))")
    proc = _start(tmp_path, code, {"TRTLLM_DWDP": "prefetch_depth=2"})
    assert proc.returncode == 0 and "{'model': 'm'}" in proc.stdout, proc.stderr
    assert "DWDP adapter active for TensorRT-LLM 0.0.0+fake" in proc.stderr


def test_options_from_a_file(tmp_path):
    opts = tmp_path / "opts.yaml"
    opts.write_text("max_num_tokens: 8\ndwdp:\n  prefetch_depth: 3\n")
    code = "import tensorrt_llm; from tensorrt_llm_dwdp.integrations.trtllm import adapter; " \
           "print(adapter.installed_options().fields)"
    proc = _start(tmp_path, code, {"TRTLLM_DWDP_OPTIONS": str(opts)})
    assert proc.returncode == 0 and "{'prefetch_depth': 3}" in proc.stdout, proc.stderr


def test_bad_options_keep_the_interpreter_alive_and_stop_tensorrt_llm(tmp_path):
    code = ("print('alive')\n"
            "try:\n import tensorrt_llm\nexcept Exception as e:\n print('import failed:', type(e).__name__)")
    proc = _start(tmp_path, code.replace("; ", "\n"), {"TRTLLM_DWDP": "group_sise=2"})
    assert proc.returncode == 0 and "alive" in proc.stdout and "import failed: DwdpConfigError" in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line]
    assert len(lines) == 1 and "did you mean 'group_size'" in lines[0], proc.stderr  # one clear line


def test_a_broken_package_never_crashes_start_up(tmp_path):
    broken = tmp_path / "broken"
    (broken / "tensorrt_llm_dwdp").mkdir(parents=True)
    (broken / "tensorrt_llm_dwdp" / "__init__.py").write_text("raise ImportError('simulated broken install')\n")
    proc = _start(tmp_path, "print('alive')", {"TRTLLM_DWDP": "1"}, pythonpath_first=[str(broken)])
    assert proc.returncode == 0 and "alive" in proc.stdout
    assert proc.stderr.strip() == ("tensorrt_llm_dwdp: TensorRT-LLM activation hook not loaded: "
                                   "ImportError: simulated broken install")


def test_setup_puts_the_pth_at_the_wheel_root(tmp_path):
    out = tmp_path / "build_lib"
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, DWDP_BUILD_EXT="0"))
    assert proc.returncode == 0, proc.stderr
    assert (out / "tensorrt_llm_dwdp_trtllm.pth").read_text() == open(PTH).read()


def test_the_installed_pth_is_the_repositorys():
    installed = [os.path.join(d, "tensorrt_llm_dwdp_trtllm.pth") for d in site.getsitepackages()]
    installed = [p for p in installed if os.path.exists(p)]
    if not installed:
        pytest.skip("this environment did not install the package with pip (no .pth in site-packages)")
    assert open(installed[0]).read() == open(PTH).read()


def test_the_hook_adds_the_build_flag_and_patches_the_engine_runners(tmp_path):
    """trtllm-build's parser, ModelRunner / ModelRunnerCpp.from_dir and the LLM API worker's setup_engine, as
    TensorRT-LLM names them, in a fresh process."""
    fake = tmp_path / "fake" / "tensorrt_llm"
    (fake / "commands").mkdir(parents=True)
    (fake / "runtime").mkdir()
    (fake / "commands" / "__init__.py").write_text("")
    (fake / "commands" / "build.py").write_text(
        "import argparse\n\ndef parse_arguments():\n    p = argparse.ArgumentParser()\n"
        "    p.add_argument('--output_dir')\n    return p\n")
    (fake / "runtime" / "__init__.py").write_text("")
    for mod, cls in (("model_runner", "ModelRunner"), ("model_runner_cpp", "ModelRunnerCpp")):
        (fake / "runtime" / f"{mod}.py").write_text(
            f"class {cls}:\n    @classmethod\n    def from_dir(cls, engine_dir, *, rank=0):\n        return cls\n")
    (fake / "executor").mkdir()
    (fake / "executor" / "__init__.py").write_text("")
    (fake / "executor" / "base_worker.py").write_text("class BaseWorker:\n    def setup_engine(self):\n        pass\n")
    code = ("import tensorrt_llm.commands.build as b, tensorrt_llm.runtime.model_runner as m, "
            "tensorrt_llm.runtime.model_runner_cpp as c, tensorrt_llm.executor.base_worker as w; "
            "print(b.parse_arguments().parse_args([]).dwdp_group_size, "
            "m.ModelRunner.from_dir.__func__._dwdp_wrapped, c.ModelRunnerCpp.from_dir.__func__._dwdp_wrapped, "
            "m.ModelRunner.from_dir('nowhere') is m.ModelRunner, w.BaseWorker.setup_engine._dwdp_wrapped)")
    proc = _start(tmp_path, code, {"TRTLLM_DWDP": "1"})
    assert proc.returncode == 0 and "0 True True True True" in proc.stdout, proc.stdout + proc.stderr
