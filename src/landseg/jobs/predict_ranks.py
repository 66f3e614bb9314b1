"""``mpiexec -n N landseg predict ... --output DIR``: the inputs shared out among the ranks.

Each rank predicts unit k of the job's units of work sorted by path when k mod N = its rank
(:func:`landseg.inference.job.share_pieces`, as ``--shard rank/N`` shares inputs): a unit is
an input, or a piece of rows of a scene tall enough to be cut among the ranks
(:func:`landseg.inference.job.cut_rows`). No messages are needed to share the work: every
rank computes the same cut from the same inputs, and records its own units in files of their
own (safe for concurrent writers, see :mod:`landseg.inference.job`); the rasters are those of
one process. The ranks meet three times, each a collective that also carries failures, so
that no rank waits for one that failed: once every rank has checked its inputs; after rank 0
alone has begun the job (written ``predict.json`` and the cuts, or with ``--overwrite``
removed the old state first; the other ranks only read them); and at the end, once every
rank is done, when rank 0 alone assembles the cut scenes and writes the mosaics.

mpi4py is imported only when the process was launched by an MPI launcher
(:func:`landseg.jobs.mpi.launched_by_mpi`), so plain runs never initialise MPI.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from landseg.core.errors import LandsegError
from landseg.jobs.mpi import launched_by_mpi

#: Seconds between two looks at whether every rank has arrived.
WAIT_POLL_S = 0.05


@dataclass(frozen=True)
class Ranks:
    """This process's place in an MPI launch of several ranks."""

    comm: Any
    rank: int
    size: int

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.size

    def agree(self, failure: BaseException | None) -> None:
        """Wait for every rank; raise here when another rank failed (this rank's own failure
        is its caller's to raise), naming the rank and its error's first line."""
        line = None
        if failure is not None:
            line = str(failure).splitlines()[0] if str(failure) else type(failure).__name__
        barrier = self.comm.Ibarrier()  # polled: a blocking wait spins a core at 100 %,
        while not barrier.Test():  # slowing the ranks still predicting on the node
            time.sleep(WAIT_POLL_S)
        seen = self.comm.allgather(line)
        others = [(r, text) for r, text in enumerate(seen) if text is not None and r != self.rank]
        if failure is None and others:
            rank, text = others[0]
            raise LandsegError(f"rank {rank} of {self.size} failed: {text}")


def predict_ranks() -> Ranks | None:
    """The ranks of this launch (None: not under MPI, or a single rank)."""
    if not launched_by_mpi():
        return None
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if comm.Get_size() < 2:
        return None
    return Ranks(comm, comm.Get_rank(), comm.Get_size())
