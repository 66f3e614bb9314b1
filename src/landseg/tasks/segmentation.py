"""The LightningModule: one model, one loss, ODEON's metrics, optimiser and scheduler.

Everything it needs to be rebuilt travels in its hyperparameters (the resolved config as
plain JSON types, so checkpoints load with ``weights_only=True``), so a checkpoint alone is
enough to resume or predict. The task turns that dict into the typed config once, in
``__init__``, and reads attributes from then on.
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torchmetrics import Metric

from landseg.config.schema import LandsegConfig
from landseg.models.registry import build_model, model_size_multiple
from landseg.tasks.finetune import parameter_groups
from landseg.tasks.losses import build_loss
from landseg.tasks.metrics import (
    ConfusionMIoU,
    LossMean,
    SegmentationMetrics,
    metrics_from_confusion,
    miou,
)
from landseg.tasks.optim import SCHEDULERS, build_optimizer, build_scheduler


class SegmentationTask(pl.LightningModule):
    """Semantic segmentation of multi-band rasters.

    Args:
        config: the resolved landseg config, as ``LandsegConfig.model_dump(mode="json")``.
        in_channels: image bands fed to the model.
        class_labels: one name per class (their count is the number of classes).
    """

    def __init__(
        self,
        config: dict[str, Any],
        in_channels: int,
        class_labels: list[str],
        channels_last: bool | None = None,
    ):
        """``config`` as the run was given it (``auto`` values included: a continued run
        compares it with its own); ``channels_last``: what training resolved
        ``device_setup.channels_last`` to (None: the config's value when it is a bool)."""
        super().__init__()
        self.save_hyperparameters()
        self.config = LandsegConfig.model_validate(config)
        train = self.config.train_setup
        self.in_channels = int(in_channels)
        self.class_labels = list(class_labels)
        n_classes = len(self.class_labels)
        self.model = build_model(train.model_name, in_channels, n_classes, train.model_params)
        self.size_multiple = model_size_multiple(train.model_name, train.model_params)
        configured = self.config.device_setup.channels_last
        self.channels_last = configured is True if channels_last is None else channels_last
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss_fn = build_loss(train.loss, n_classes, train.class_imbalance)
        # train: only the mIoU, logged as a Metric object so that Lightning computes it
        # when the epoch ends, before any on_train_epoch_end hook reads it (callbacks run
        # theirs before the module's, so a value logged there would reach them an epoch late)
        self.train_metrics = ConfusionMIoU(n_classes)
        self.val_metrics = SegmentationMetrics(n_classes)
        self.test_metrics = SegmentationMetrics(n_classes)
        self.train_loss_mean = LossMean()
        self.val_loss_mean = LossMean()
        self.test_loss_mean = LossMean()
        for metric in self._named_metrics().values():
            # In the checkpoints: a run resumed mid-epoch ends that epoch with the metrics of
            # all its batches, not only of those after the resume.
            metric.persistent(True)
        self.last_confusion: np.ndarray | None = None
        self.last_report: dict[str, Any] | None = None

    def _named_metrics(self) -> dict[str, Metric]:
        return {name: m for name, m in self.named_modules() if isinstance(m, Metric)}

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits at the input's size, whatever it is: inputs that the network's strides do
        not divide (a whole test scene, say) are mirror-padded, then the logits cropped."""
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        height, width = image.shape[-2:]
        pad_h, pad_w = -height % self.size_multiple, -width % self.size_multiple
        if not pad_h and not pad_w:
            return self.model(image)
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        padded = torch.nn.functional.pad(image, (0, pad_w, 0, pad_h), mode=mode)
        return self.model(padded)[..., :height, :width]

    # ------------------------------------------------------------------ steps

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        # Under mixed precision the network computes in bf16/fp16; the loss, the metrics and
        # the confusion matrix are computed in float32 from the logits cast to float32, with
        # autocast off (it would run some of their ops in the low precision again).
        logits = self(batch["image"]).float()
        with torch.autocast(device_type=logits.device.type, enabled=False):
            loss = self.loss_fn(logits, batch["mask"])
            metrics = getattr(self, f"{stage}_metrics")
            metrics.update(logits.detach(), batch["mask"])
        batch_size = batch["image"].shape[0]
        if stage == "train":
            self.log("train_miou", metrics, on_step=False, on_epoch=True, batch_size=batch_size)
        loss_mean = getattr(self, f"{stage}_loss_mean")
        loss_mean(loss, batch_size)  # forward: this batch's value for the step log, and update
        # A logged Metric is computed (summed over ranks) and reset by Lightning at epoch end.
        self.log(
            f"{stage}_loss",
            loss_mean,
            on_step=stage == "train",
            on_epoch=True,
            prog_bar=True,
            batch_size=batch_size,
        )
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return torch.softmax(self(batch["image"]), dim=1)

    def _epoch_end(self, stage: str) -> None:
        metrics = getattr(self, f"{stage}_metrics")
        confusion = metrics.compute().cpu().numpy()  # synced across DDP ranks
        metrics.reset()
        value = miou(confusion)
        # the confusion matrix is already summed over ranks: every rank logs the same value
        self.log(f"{stage}_miou", value, prog_bar=True, sync_dist=True)
        self.last_confusion = confusion
        self.last_report = metrics_from_confusion(confusion, self.class_labels)

    # A new epoch starts its metrics from zero. They are not left to Lightning's reset at the
    # end of an epoch: a run restored from a checkpoint taken at an epoch's end (after its
    # validation, before that reset) holds the finished epoch's states, and Lightning, which
    # has not seen them logged in this process, would not reset them. Not called for an epoch
    # resumed mid-way, whose restored states are its own first batches.

    def on_train_epoch_start(self) -> None:
        self._reset_metrics("train")

    def on_validation_epoch_start(self) -> None:
        self._reset_metrics("val")

    def on_test_epoch_start(self) -> None:
        self._reset_metrics("test")

    def _reset_metrics(self, stage: str) -> None:
        getattr(self, f"{stage}_metrics").reset()
        getattr(self, f"{stage}_loss_mean").reset()

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    # ------------------------------------------------------------------ optimisation

    def configure_optimizers(self) -> Any:
        train = self.config.train_setup
        # the encoder in a group of its own at encoder_lr_factor x lr (one group when 1)
        parameters, lr_factors = parameter_groups(
            self.model, list(self.parameters()), train.lr, train.encoder_lr_factor
        )
        optimizer = build_optimizer(
            train.optimizer_config.optimizer,
            parameters,
            train.lr,
            train.optimizer_config.params,
        )
        scheduler_name = train.scheduler_config.scheduler
        scheduler = build_scheduler(
            scheduler_name,
            optimizer,
            train.scheduler_config.params,
            train.lr,
            train.epochs,
            lr_factors,
        )
        info = SCHEDULERS.info(scheduler_name)
        lr_scheduler: dict[str, Any] = {"scheduler": scheduler, "interval": info["interval"]}
        if info.get("needs_monitor"):
            lr_scheduler["monitor"] = "val_loss"
        return {"optimizer": optimizer, "lr_scheduler": lr_scheduler}

    # ------------------------------------------------------------------ resume

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Random states as plain tensors and lists, so ``weights_only=True`` loads them."""
        np_state: Any = np.random.get_state()
        checkpoint["landseg_rng"] = {
            "torch": torch.get_rng_state(),
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "python": _to_lists(random.getstate()),
        }
        if torch.cuda.is_available():
            checkpoint["landseg_rng"]["cuda"] = torch.cuda.get_rng_state_all()
        self._save_metric_states_of_every_rank(checkpoint)

    def _save_metric_states_of_every_rank(self, checkpoint: dict[str, Any]) -> None:
        """DDP: each rank's metric states count its own batches, and the checkpoint is rank
        0's. So it holds their sum over the ranks (every rank saves a checkpoint, so every rank
        takes part in the sum), and on loading rank 0 alone takes it up
        (:meth:`on_load_checkpoint`): an epoch continued mid-way ends with each of its batches
        counted once, not rank 0's first batches once per rank."""
        weights = checkpoint.get("state_dict")
        if not isinstance(weights, dict) or self._trainer is None or self.trainer.world_size <= 1:
            return
        for name, metric in self._named_metrics().items():
            with metric.sync_context():
                weights.update(metric.state_dict(prefix=f"{name}."))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Checkpoints written before metric states were saved start those metrics empty.
        weights = checkpoint.get("state_dict")
        if isinstance(weights, dict):
            others = self._trainer is not None and self.trainer.global_rank > 0
            for name, metric in self._named_metrics().items():
                if others:  # the saved states are every rank's sum: rank 0 holds them
                    metric.reset()
                for key, value in metric.state_dict(prefix=f"{name}.").items():
                    if others:
                        weights[key] = value
                    else:
                        weights.setdefault(key, value)
        state = checkpoint.get("landseg_rng")
        if not state:
            return
        torch.set_rng_state(state["torch"])
        kind, keys, *rest = state["numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
        random.setstate(_to_tuples(state["python"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value
