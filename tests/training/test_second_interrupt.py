"""A second Ctrl-C stops a run at once (docs/clusters.md, docs/design.md): the first asks for
a stop at the next resumable point, the second, for a person who does not want to wait, ends
the step in progress where it is."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from landseg.cli.main import main
from tests.helpers import write_config


def test_a_second_ctrl_c_stops_in_the_middle_of_the_step(
    demo_config: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """Both SIGINTs arrive during the second training step, from inside it (Python runs the
    handler as soon as ``os.kill`` returns: no timing involved). After the first, the step
    goes on; the second ends it there: no step checkpoint, the run marked interrupted, exit
    130 with the plain line."""
    from landseg.tasks.segmentation import SegmentationTask

    demo_config["train_setup"].update(epochs=3, batch_size=4)
    demo_config["output_setup"].update(
        name_exp_log="exp", version_name="v1", use_tensorboard=False, get_prediction=False
    )
    original = SegmentationTask.training_step
    reached: list[str] = []

    def step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        if self.global_step == 1 and not reached:
            os.kill(os.getpid(), signal.SIGINT)
            reached.append("after the first Ctrl-C")
            os.kill(os.getpid(), signal.SIGINT)
            reached.append("after the second Ctrl-C")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(SegmentationTask, "training_step", step)
    # what the run must give back (another test of this process may have left SIG_IGN)
    before = signal.getsignal(signal.SIGINT)
    capsys.readouterr()
    code = main(["train", "-c", str(write_config(tmp_path / "c.json", demo_config))])
    err = capsys.readouterr().err
    assert code == 130, err
    assert reached == ["after the first Ctrl-C"]  # the second stopped the step right there
    assert err.strip().splitlines()[-1] == "interrupted"
    run = tmp_path / "runs" / "exp" / "v1"
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    assert not list((run / "checkpoints").glob("*-step=*.ckpt"))  # not the first's stop
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
