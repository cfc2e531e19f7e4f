import os
import subprocess
import sys

from tensorrt_llm_dwdp.commands.main import main
from tensorrt_llm_dwdp.commands.mpirun import mpirun_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_doctor_exits_zero_and_reports(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for key in ("tensorrt_llm_dwdp", "C++ extension:", "memory backends:", "GPUs:", "MPI library:", "mpirun:"):
        assert key in out


def test_console_script_doctor():
    proc = subprocess.run([sys.executable, "-m", "tensorrt_llm_dwdp", "doctor"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "memory backends: cpu_shm" in proc.stdout


def test_verify_rejects_bad_options_before_launch(capsys):
    assert main(["verify", "--ranks", "2", "--routing", "nonsense"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--routing" in err


def test_verify_runs_two_ranks():
    proc = subprocess.run([sys.executable, "-m", "tensorrt_llm_dwdp", "verify", "--ranks", "2", "--steps", "2"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0 and "PASS" in proc.stdout, proc.stdout + proc.stderr


def test_mpirun_command_shape():
    cmd = mpirun_command(3, ["-m", "x"], {"A": "1"})
    assert cmd[1:3] == ["-n", "3"] and cmd[-3:] == [sys.executable, "-m", "x"]


def test_launch_env_keeps_user_knobs_and_drops_runtime_state():
    from tensorrt_llm_dwdp.commands.mpirun import clean_launch_env
    env = {"OMPI_MCA_plm_rsh_agent": "false", "OMPI_MCA_btl": "self,vader", "OMPI_ALLOW_RUN_AS_ROOT": "1",
           "PMIX_RANK": "0", "OMPI_COMM_WORLD_RANK": "0", "OMPI_MCA_ess_base_jobid": "1", "PATH": "/bin"}
    assert clean_launch_env(env) == {"OMPI_MCA_plm_rsh_agent": "false", "OMPI_MCA_btl": "self,vader",
                                     "OMPI_ALLOW_RUN_AS_ROOT": "1", "PATH": "/bin"}


def test_doctor_asks_the_mpi_library_without_leaving_shared_memory(monkeypatch):
    """The version comes from a child that never initialises MPI: an initialised singleton leaves Open MPI's
    shared-memory segment in /dev/shm when it exits."""
    from tensorrt_llm_dwdp.bootstrap import mpi_library_version
    from tensorrt_llm_dwdp.commands.mpirun import MPI_BACKING_VARS
    for key in MPI_BACKING_VARS:  # as a user's shell has it (conftest gives the tests' segments a folder)
        monkeypatch.delenv(key, raising=False)
    before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    assert "MPI" in mpi_library_version()
    after = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    assert not {n for n in after - before if n.startswith("sm_segment")}
