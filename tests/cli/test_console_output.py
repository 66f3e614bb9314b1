"""A run's console when stderr is a log file: plain progress lines, no bars, no library noise."""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from lightning.pytorch.callbacks import RichProgressBar

from landseg.callbacks.progress import PlainProgressBar, progress_bar, quiet_known_noise
from tests.helpers import write_config

#: What torch, Lightning and rasterio print for every run (and every cv task) before issue 11.
NOISE = (
    "litlogger",
    "isinstance(treespec, LeafSpec)",
    "exists and is not empty",
    "NotGeoreferencedWarning",
    "Dataset has no geotransform",
    "torch.jit.trace",
    "was configured so validation will run",
    "TPU available: False",
    "GPU available: False",
    "Automatic Mixed Precision (AMP)",
    "Restoring states from the checkpoint",
    "Loaded model weights from the checkpoint",
    "weights_only",
    "Test metric",
    "DataLoader 0",
    "`Trainer.fit` stopped: `max_epochs=",
)


def test_train_with_stderr_to_a_file_writes_plain_lines(demo_config: dict, tmp_path: Path) -> None:
    demo_config["train_setup"].update(epochs=2, export_checkpoint="torchscript")
    demo_config["output_setup"].update(progress=1, use_tensorboard=False, get_prediction=False)
    config = write_config(tmp_path / "c.json", demo_config)
    with (tmp_path / "stderr.txt").open("w+") as stderr:  # a file: not a terminal
        done = subprocess.run(
            [sys.executable, "-m", "landseg.cli.main", "train", "-c", str(config)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            timeout=600,
            check=False,
        )
        stderr.seek(0)
        err = stderr.read()
    assert done.returncode == 0, err
    assert "\r" not in err and "\x1b[" not in err  # no bar: no carriage return, no escape
    for epoch in (1, 2):  # one line at each epoch's end, with the validation metrics
        line = re.compile(
            rf"^\[[\w-]+\] epoch {epoch}/2 step 4/4 train_loss=[\d.]+ val_loss=[\d.]+ "
            rf"val_miou=[\d.]+ \| [\d.]+ samples/s \| epoch time \d+:\d\d:\d\d$",
            re.MULTILINE,
        )
        assert line.search(err), err
    # the test scores: one plain line as the epochs', not Lightning's boxed table on stdout
    test_line = re.compile(r"^\[[\w-]+\] test test_loss=[\d.]+ test_miou=[\d.]+$", re.MULTILINE)
    assert len(test_line.findall(err)) == 1, err
    for text in NOISE:
        assert err.count(text) <= 1, f"{text!r} repeats:\n{err}"
    assert [text for text in NOISE if text in err + done.stdout] == [], err + done.stdout


class FakeTrainer(SimpleNamespace):
    """What a progress bar reads of Lightning's Trainer."""

    def __init__(self, **values: Any):
        defaults: dict[str, Any] = dict(
            current_epoch=0,
            max_epochs=2,
            max_steps=-1,
            global_step=0,
            num_training_batches=10,
            loggers=[],
            progress_bar_metrics={},
            sanity_checking=False,
        )
        super().__init__(**{**defaults, **values})


def test_plain_lines_at_most_one_per_interval_and_one_per_epoch() -> None:
    now = [0.0]
    out = io.StringIO()
    bar = PlainProgressBar(interval_s=30, label="task-1", stream=out, clock=lambda: now[0])
    trainer = FakeTrainer()
    bar._trainer = trainer  # type: ignore[assignment]
    batch = {"image": _Tensor(4), "mask": _Tensor(4)}
    bar.on_train_start(trainer, None)  # type: ignore[arg-type]
    bar.on_train_epoch_start(trainer, None)  # type: ignore[arg-type]
    for i in range(10):  # 10 s a batch of 4: a line at 30, 60 and 90 s, none at the last batch
        now[0] += 10
        trainer.progress_bar_metrics = {"train_loss_step": 1.0 - i / 20, "v_num": "ab12"}
        bar.on_train_batch_end(trainer, None, None, batch, i)  # type: ignore[arg-type]
    trainer.progress_bar_metrics = {
        "train_loss_step": 0.55,
        "val_loss": 0.75,
        "val_miou": 0.5,
        "train_loss_epoch": 0.8,
    }
    now[0] += 5  # the validation
    bar.on_train_epoch_end(trainer, None)  # type: ignore[arg-type]
    assert out.getvalue().splitlines() == [
        "[task-1] epoch 1/2 step 3/10 train_loss=0.9 | 0.4 samples/s | epoch left 0:01:10",
        "[task-1] epoch 1/2 step 6/10 train_loss=0.75 | 0.4 samples/s | epoch left 0:00:40",
        "[task-1] epoch 1/2 step 9/10 train_loss=0.6 | 0.4 samples/s | epoch left 0:00:10",
        "[task-1] epoch 1/2 step 10/10 train_loss=0.8 val_loss=0.75 val_miou=0.5 "
        "| 0.4 samples/s | epoch time 0:01:45",
    ]
    bar.disable()  # Lightning disables it on ranks other than 0
    now[0] += 100
    bar.on_train_epoch_end(trainer, None)  # type: ignore[arg-type]
    assert len(out.getvalue().splitlines()) == 4


class _Tensor:
    def __init__(self, n: int):
        self.shape = (n, 3, 8, 8)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_is_rich_at_a_terminal_plain_elsewhere_off_at_0() -> None:
    assert progress_bar(0) is None
    assert isinstance(progress_bar(1, stream=_Terminal()), RichProgressBar)
    assert isinstance(progress_bar(1, stream=io.StringIO()), PlainProgressBar)


def test_known_noise_is_dropped_and_nothing_else() -> None:
    from rasterio.errors import NotGeoreferencedWarning

    tip = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    tip.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quiet_known_noise()
            quiet_known_noise()  # idempotent
            for message, category in (
                ("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning),
                ("Checkpoint directory /x/checkpoints exists and is not empty.", UserWarning),
                ("Dataset has no geotransform, gcps, or rpcs. The ...", NotGeoreferencedWarning),
                ("The given matrix is equal to Affine.identity or ...", NotGeoreferencedWarning),
                ("`torch.jit.trace` is deprecated. Please switch to ...", FutureWarning),
                ("`torch.jit.save` is deprecated. Please switch to ...", DeprecationWarning),
                ("You are using `torch.load` with `weights_only=False` (the ...", FutureWarning),
                ("a warning that matters", UserWarning),
            ):
                warnings.warn(message, category, stacklevel=1)
            tip.info("💡 Tip: For seamless cloud logging ... try installing [litlogger](...)")
            tip.info("GPU available: False, used: False")
            tip.info("Restoring states from the checkpoint path at /x/checkpoints/a.ckpt")
            tip.info("GPU available: True (cuda), used: False")  # worth knowing: kept
            tip.info("a message that matters")
        assert [str(w.message) for w in caught] == ["a warning that matters"]
        assert records == ["GPU available: True (cuda), used: False", "a message that matters"]
        assert sum(type(f).__name__ == "DropRecords" for f in tip.filters) == 1
    finally:
        tip.removeHandler(handler)
