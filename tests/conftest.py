import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
import torch

from tensorrt_llm_dwdp.commands.mpirun import MPI_BACKING_VARS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A process that initialises MPI on its own (a singleton: this one, the subprocesses tests start) leaves Open MPI's
# 16 MiB shared-memory segment in /dev/shm when it exits. Every such segment of the run goes to one folder, removed
# at the end; jobs the launcher starts get their own folder unless a test passes these on (see test_front_door).
MPI_SEGMENTS = tempfile.mkdtemp(prefix="pytest-mpi-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
for _key in MPI_BACKING_VARS:
    os.environ.setdefault(_key, MPI_SEGMENTS)
atexit.register(shutil.rmtree, MPI_SEGMENTS, True)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def run_verify(ranks, *args, timeout=180, env=None):
    """Run the verify job on `ranks` MPI ranks; returns the CompletedProcess (text output)."""
    from tensorrt_llm_dwdp.commands.mpirun import clean_launch_env, mpirun_command

    extra = {"OMP_NUM_THREADS": "1"}
    extra.update(env or {})
    cmd = mpirun_command(ranks, ["-m", "tensorrt_llm_dwdp.verify", *args], extra)
    return subprocess.run(cmd, env=dict(clean_launch_env(dict(os.environ)), **extra), capture_output=True,
                          text=True, timeout=timeout,
                          cwd=ROOT)


@pytest.fixture
def verify():
    return run_verify


def fresh_seed():
    """A new seed per test run, printed so a failure can be replayed."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed={seed}", file=sys.stderr)
    return seed
