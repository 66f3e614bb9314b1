"""Several landseg processes started by a launcher agree on one run folder before training.

``srun`` (several SLURM tasks), ``torchrun`` and one command per node (``NODE_RANK``) start every
rank, or every node's first process, as a separate ``landseg train``. Only global rank 0 may
choose the run folder (a default version name is the launch time, which differs between
nodes; a continued run starts from the newest checkpoint, which rank 0 may be about to prune)
and write in it; the other ranks must train in *that* folder from *that* checkpoint, whether
or not the nodes share a filesystem for the decision.

So rank 0 makes the decision (folder, checks, run files, the checkpoint to start from) and
hands it to the others through a ``torch.distributed.TCPStore`` on the address and port of the
distributed group (``MASTER_ADDR``/``MASTER_PORT``, which are open between the nodes anyway),
waits until every rank has read it, and closes the store; Lightning's process group then starts
on the same port. A rank that cannot use the run (rank 0 refused the config) gets rank 0's
error line and exits like it.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from landseg.core.errors import LandsegError
from landseg.launch.cluster import ExternalLaunch

#: How long the other ranks wait for rank 0's decision (it checks the data and the run first).
DECISION_TIMEOUT = dt.timedelta(minutes=30)
_DECISION, _READ = "landseg/run-decision", "landseg/run-decision-read"


@dataclass(frozen=True)
class RunDecision:
    """Rank 0's decision: the run folder, the checkpoint to start from, or why not to train."""

    run: str | None = None
    checkpoint: str | None = None
    resuming: bool = False
    finished: bool = False  # the run is complete: every rank returns at once
    error: str | None = None  # rank 0 refused: every rank fails with this line
    precision: str | None = None  # rank 0's device_setup.precision (auto resolved)
    channels_last: bool | None = None

    def encode(self) -> bytes:
        return json.dumps(self.__dict__).encode()

    @classmethod
    def decode(cls, raw: bytes) -> RunDecision:
        return cls(**json.loads(raw))

    @property
    def checkpoint_path(self) -> Path | None:
        return Path(self.checkpoint) if self.checkpoint else None


class DecisionBoard:
    """Rank 0's side: publish the decision once, then wait until every rank has read it."""

    def __init__(self, launch: ExternalLaunch):
        import torch.distributed as dist

        self.launch = launch
        self.published = False
        self._store: Any = dist.TCPStore(
            launch.address,
            launch.port,
            launch.size,
            True,
            DECISION_TIMEOUT,
            wait_for_workers=False,
        )

    def publish(self, decision: RunDecision) -> None:
        if self.published:
            return
        self.published = True
        store, self._store = self._store, None
        store.set(_DECISION, decision.encode())
        deadline = time.monotonic() + DECISION_TIMEOUT.total_seconds()
        while store.add(_READ, 0) < self.launch.size - 1:
            if time.monotonic() > deadline:
                raise LandsegError(
                    f"{self.launch.size - 1} other ranks of this {self.launch.kind} launch did "
                    f"not join within {DECISION_TIMEOUT} (MASTER_ADDR {self.launch.address}, "
                    f"MASTER_PORT {self.launch.port})"
                )
            time.sleep(0.05)
        del store  # closes the port for Lightning's process group

    def close(self) -> None:
        self._store = None


def receive_decision(launch: ExternalLaunch) -> RunDecision:
    """A rank other than 0: wait for rank 0's decision, acknowledge it, return it."""
    import torch.distributed as dist

    try:
        store = dist.TCPStore(launch.address, launch.port, launch.size, False, DECISION_TIMEOUT)
        raw = store.get(_DECISION)
        store.add(_READ, 1)
    except (RuntimeError, TimeoutError) as error:  # torch's DistStoreError is a RuntimeError
        raise LandsegError(
            f"rank {launch.rank} of this {launch.kind} launch got no run folder from rank 0 at "
            f"{launch.address}:{launch.port}: {str(error).splitlines()[0]}"
        ) from error
    return RunDecision.decode(bytes(raw))
