"""A training DataLoader that resumes mid-epoch exactly where a checkpoint left it.

Lightning stores the ``state_dict`` of a loader that has one in every checkpoint and hands it
back to ``load_state_dict`` before the first batch of the resumed run (its "stateful loader"
support). The state is the sampler's epoch and the number of batches already trained in it;
:class:`ResumeTracker` keeps that count current, so the batches of a resumed epoch are the ones
an uninterrupted run would have seen, in the same order, with the same augmentations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from landseg.data.sampler import SeededSampler
from landseg.data.workers import SignalSafeDataLoader


class _DeferredIterator:
    """The loader's iterator, created at the first batch rather than when asked for.

    Lightning asks for the train iterator when it sets the loop up, before it sets the
    sampler's epoch for a run resumed at an epoch's end; worker processes fetch indices from
    the sampler as soon as their iterator exists, so they would follow the wrong epoch's
    order (0 workers read the sampler only at the first batch, after the epoch is set).
    """

    def __init__(self, start: Callable[[], Iterator[Any]]):
        self._start = start
        self._iterator: Iterator[Any] | None = None

    def __iter__(self) -> _DeferredIterator:
        return self

    def __next__(self) -> Any:
        if self._iterator is None:
            self._iterator = self._start()
        return next(self._iterator)


class ResumableDataLoader(SignalSafeDataLoader):
    """A DataLoader over a :class:`~landseg.data.sampler.SeededSampler` with a resumable state."""

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        if self.num_workers == 0:
            return self._start_workers()
        return _DeferredIterator(self._start_workers)

    counting_epoch: int = 0
    batches_done: int = 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": int(self.counting_epoch), "batches_done": int(self.batches_done)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        if done >= len(self):  # saved at the end of an epoch: the next one starts afresh
            epoch, done = epoch + 1, 0
        sampler = cast("SeededSampler", self.sampler)
        sampler.set_epoch(epoch)
        sampler.skip_next(done * (self.batch_size or 1))
        self.counting_epoch, self.batches_done = epoch, done


class ResumeTracker(Callback):
    """Counts the batches trained in the current epoch on the resumable train loader."""

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        loader = trainer.train_dataloader
        if not isinstance(loader, ResumableDataLoader):
            return
        if loader.counting_epoch != trainer.current_epoch:
            loader.counting_epoch, loader.batches_done = trainer.current_epoch, 0
        loader.batches_done += 1
