"""DDP ranks agree on a stop (docs/clusters.md): SIGTERM reaching one rank of a 2-rank gloo
run stops both after the same step, each exiting 143, and the run continued from there ends
exactly like an uninterrupted one.

Each rank is started as ``torchrun --nnodes 2`` starts it (tests/training/test_multinode.py),
so that the test holds both processes and sees each one's exit status.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import base_env, final_state, free_port, torchrun_nodes, write_config

pytestmark = pytest.mark.slow

#: How long a stopped rank may take; a rank left training alone waits forever in its next
#: all-reduce, and is killed after this.
STOP_S = 120


def start_ranks(arguments: list[str]) -> list[subprocess.Popen[str]]:
    env = base_env()
    return [
        subprocess.Popen(
            [sys.executable, "-m", "landseg.cli.main", *arguments],
            env={**env, **node},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in torchrun_nodes(free_port())
    ]


def finish(ranks: list[subprocess.Popen[str]], timeout: float = 600) -> list[tuple[int, str]]:
    """Each rank's (exit status, stderr); both are killed if one is still running after
    ``timeout`` s."""
    deadline = time.monotonic() + timeout
    results = []
    try:
        for rank in ranks:
            _, err = rank.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((rank.returncode, err))
    except subprocess.TimeoutExpired:
        for rank in ranks:
            rank.kill()
        errs = [rank.communicate()[1][-2000:] for rank in ranks]
        raise AssertionError(f"a rank still ran {timeout} s on: {errs}") from None
    return results


def test_sigterm_to_one_rank_stops_both_after_the_same_step(
    demo_config: dict, tmp_path: Path
) -> None:
    demo_config["train_setup"].update(
        epochs=2, batch_size=2, checkpoint_every_n_steps=1, deterministic=True
    )
    demo_config["output_setup"].update(
        name_exp_log="exp", save_top_k=1, use_tensorboard=False, get_prediction=False
    )
    demo_config["data_source"].pop("test_file")
    demo_config["device_setup"].update(
        accelerator="cpu", num_nodes=2, num_workers=0, precision="32-true"
    )
    demo_config["output_setup"]["version_name"] = "reference"
    reference = write_config(tmp_path / "reference.json", demo_config)
    for code, err in finish(start_ranks(["train", "-c", str(reference)])):
        assert code == 0, err[-3000:]

    demo_config["output_setup"]["version_name"] = "stopped"
    stopped = write_config(tmp_path / "stopped.json", demo_config)
    run = tmp_path / "runs" / "exp" / "stopped"
    ranks = start_ranks(["train", "-c", str(stopped)])
    deadline = time.monotonic() + 300
    while not list((run / "checkpoints").glob("*-step=*.ckpt")):  # both ranks are training
        assert time.monotonic() < deadline and all(r.poll() is None for r in ranks), "no step"
        time.sleep(0.01)
    os.kill(ranks[1].pid, signal.SIGTERM)  # rank 1 alone: rank 0 learns it from rank 1
    results = finish(ranks, timeout=STOP_S)
    lines = []
    for code, err in results:
        assert code == 128 + signal.SIGTERM, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        (line,) = [line for line in err.splitlines() if line.startswith("interrupted")]
        lines.append(line)
    assert lines[0] == lines[1], lines  # the same step, the same checkpoint to continue from
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    checkpoint = Path(lines[0].split("--resume ", 1)[1].strip())
    assert checkpoint.is_file() and "-step=" in checkpoint.name

    for code, err in finish(start_ranks(["train", "--resume", str(checkpoint)])):
        assert code == 0, err[-3000:]
    ref_history, ref_weights, ref_names, ref_scalars = final_state(run.parent / "reference")
    history, weights, names, scalars = final_state(run)
    for key, value in ref_weights.items():
        assert torch.equal(weights[key], value), key
    assert names == ref_names
    assert history == ref_history
    assert scalars == ref_scalars
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
