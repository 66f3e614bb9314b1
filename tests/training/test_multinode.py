"""Two "nodes" on one machine: two ``landseg train`` processes with the environment that node 0
and node 1 of a two-node launch get (SLURM's ``srun``, and ``torchrun --nnodes 2``), gloo on
the CPU, ``num_nodes: 2``. They train together: one run folder, written by global rank 0
alone (node 1 neither writes a folder of its own nor touches rank 0's), and the validation
confusion matrix counts every labelled validation pixel exactly once.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import (
    assert_two_epochs_counting_each_val_pixel_once,
    base_env,
    free_port,
    torchrun_nodes,
    write_config,
)

pytestmark = pytest.mark.slow


#: ``landseg`` with a clock set to 2001-02-03 04:05:06: a node that chose the default run
#: name itself would choose another folder, however close the nodes' starts (a delay between
#: them depends on the machine's load and can be undone by it).
OTHER_CLOCK = """
import datetime, sys, types
import landseg.runs.folder
class Clock(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return cls(2001, 2, 3, 4, 5, 6, tzinfo=tz)
fake = types.ModuleType("datetime")
fake.__dict__.update(vars(datetime), datetime=Clock)
landseg.runs.folder.dt = fake
from landseg.cli.main import main
sys.exit(main())
"""


def slurm_nodes(port: int) -> list[dict[str, str]]:
    """What ``srun --nodes 2 --ntasks-per-node 1`` gives the task on each node."""
    common = {
        "SLURM_JOB_ID": "3131",
        "SLURM_JOB_NAME": "train.sbatch",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": "2",
        "SLURM_NODELIST": "127.0.0.1",  # every "node" is this host
        "SLURM_LOCALID": "0",
        "MASTER_PORT": str(port),
    }
    return [{**common, "SLURM_PROCID": str(n), "SLURM_NODEID": str(n)} for n in (0, 1)]


def plain_nodes(port: int) -> list[dict[str, str]]:
    """One ``landseg train`` per node with ``MASTER_ADDR``, ``MASTER_PORT`` and ``NODE_RANK``
    (Lightning's default environment, which would start a node's other processes itself)."""
    common = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    return [{**common, "NODE_RANK": str(n)} for n in (0, 1)]


@pytest.mark.parametrize(
    "launcher", [slurm_nodes, torchrun_nodes, plain_nodes], ids=["srun", "torchrun", "plain"]
)
def test_two_nodes_train_one_run(launcher, demo_config: dict, tmp_path: Path) -> None:
    """No run name: under SLURM the job's folder; otherwise rank 0's launch time, which node
    1, whose clock says another day and time, would not have chosen itself."""
    demo_config["train_setup"].update(epochs=2, batch_size=4)
    # no predictions of the test split: global rank 0 alone writes them after fit, whatever
    # launched it (test_ddp.py checks them under DDP); a node's own run folder would show
    # from its start
    demo_config["output_setup"].update(save_top_k=1, use_tensorboard=False, get_prediction=False)
    demo_config["output_setup"].pop("name_exp_log", None)
    demo_config["device_setup"].update(accelerator="cpu", num_nodes=2, num_workers=0)
    path = write_config(tmp_path / "nodes.json", demo_config)
    env = base_env()
    nodes = []
    for rank, node in enumerate(launcher(free_port())):
        start = ["-c", OTHER_CLOCK] if rank else ["-m", "landseg.cli.main"]
        nodes.append(
            subprocess.Popen(
                [sys.executable, *start, "train", "-c", str(path)],
                env={**env, **node},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (_, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, err[-3000:]
    assert outputs[0][0].count("run folder:") == 1 and "run folder:" not in outputs[1][0]

    runs = tmp_path / "runs"
    folders = [p for p in runs.glob("[!.]*/*") if p.is_dir()]
    assert len(folders) == 1, folders  # one run folder: node 1 wrote none of its own
    (run,) = folders
    if launcher is slurm_nodes:
        assert run == runs / "slurm" / "job-3131"
    assert f"run folder: {run}" in outputs[0][0]
    assert_two_epochs_counting_each_val_pixel_once(run, path)
