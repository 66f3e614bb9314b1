"""When the drawn outputs (figures, image grids, weight histograms) are made.

Drawing is a fixed cost per epoch (about 2 s on a CPU, matplotlib and PNG encoding): on short
epochs it would dominate training. Numbers are never thinned this way: scalars, the history,
checkpoints and the confusion-matrix arrays are written after every validation. Only the
pictures of them follow a :class:`VisualCadence`, shared by every callback that draws, so they
all draw on the same epochs:

* ``every_n_epochs=None`` ("auto"): an epoch is drawn when the drawing done so far, plus what
  the last drawing cost (before any, :data:`FIRST_COST_ESTIMATE`), stays within ``budget``
  (2 %) of the time since fit started. Long epochs are all drawn; short ones every few
  epochs; a run of a few short epochs only at its end.
* ``every_n_epochs=N``: epochs 0, N, 2N, ...
* Either way the final state is drawn: the last epoch when ``max_epochs`` tells which it is,
  and a callback that skipped the last validation (early stopping, ``max_steps``) draws it
  when fit ends (:class:`DrawsOnCadence`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

#: The share of the training time the drawn outputs may take with ``every_n_epochs=None``.
DEFAULT_BUDGET = 0.02

#: Seconds a drawing is assumed to cost before one was timed: about what the figures, the
#: image grid and the histograms of a small model take on one CPU core.
FIRST_COST_ESTIMATE = 2.0


class VisualCadence:
    """Decides, once per epoch, whether the drawn outputs are made, and keeps count of their cost.

    Args:
        every_n_epochs: draw every N epochs; ``None`` for the time budget.
        budget: share of the elapsed training time that drawing may take (``None`` mode).
        clock: seconds, monotonic (a parameter so tests can drive it).
    """

    def __init__(
        self,
        every_n_epochs: int | None = None,
        budget: float = DEFAULT_BUDGET,
        clock: Callable[[], float] = time.perf_counter,
    ):
        if every_n_epochs is not None and every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1 or None, got {every_n_epochs}")
        if not 0 < budget < 1:
            raise ValueError(f"budget must be in (0, 1), got {budget}")
        self.every_n_epochs = every_n_epochs
        self.budget = budget
        self.clock = clock
        self.spent = 0.0
        self._started: float | None = None
        self._decisions: dict[int, bool] = {}
        self._costs: dict[int, float] = {}  # epoch -> seconds its drawings took, all callbacks
        self._epoch = 0  # the epoch of the latest decision, which the drawings that follow serve

    @property
    def last_cost(self) -> float:
        """What the latest drawn epoch's drawings cost together (an estimate before any)."""
        return self._costs[max(self._costs)] if self._costs else FIRST_COST_ESTIMATE

    def start(self) -> None:
        """Start the training clock (fit start); later calls keep the first time."""
        if self._started is None:
            self._started = self.clock()

    def due(self, trainer: pl.Trainer) -> bool:
        """Whether this epoch's outputs are drawn; the same answer for every call of an epoch."""
        epoch = self._epoch = trainer.current_epoch
        if epoch not in self._decisions:
            self._decisions[epoch] = self._decide(trainer)
        return self._decisions[epoch]

    def _decide(self, trainer: pl.Trainer) -> bool:
        epoch = trainer.current_epoch
        max_epochs = getattr(trainer, "max_epochs", None)
        if max_epochs is not None and max_epochs > 0 and epoch >= max_epochs - 1:
            return True
        if self.every_n_epochs is not None:
            return epoch % self.every_n_epochs == 0
        if self._started is None:  # no fit start seen (a callback used on its own)
            self._started = self.clock()
        elapsed = self.clock() - self._started
        return self.spent + self.last_cost <= self.budget * elapsed

    @contextmanager
    def timed(self) -> Iterator[None]:
        """Count the time of the drawing inside the block against the budget."""
        begin = self.clock()
        try:
            yield
        finally:
            cost = self.clock() - begin
            self.spent += cost
            self._costs[self._epoch] = self._costs.get(self._epoch, 0.0) + cost


class DrawsOnCadence(Callback):
    """Base of the callbacks that draw on a :class:`VisualCadence` (every epoch without one).

    A subclass calls :meth:`should_draw` before drawing and draws inside :meth:`drawing`; a
    skipped occasion is remembered, and when fit ends :meth:`draw_final` draws the final state
    if the latest occasion was skipped. The cadence's clock starts with the fit.
    """

    def __init__(self, cadence: VisualCadence | None = None):
        self.cadence = cadence or VisualCadence(every_n_epochs=1)
        self._owed = False

    def should_draw(self, trainer: pl.Trainer) -> bool:
        due = self.cadence.due(trainer)
        self._owed = not due
        return due

    def owes(self) -> bool:
        """Whether the latest occasion was skipped (and has not been drawn since)."""
        return self._owed

    @contextmanager
    def drawing(self) -> Iterator[None]:
        """Time the drawing against the cadence's budget; the debt is paid."""
        with self.cadence.timed():
            yield
        self._owed = False

    def draw_final(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Draw the final state (called at fit end when the latest occasion was skipped)."""
        raise NotImplementedError

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.cadence.start()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.owes():
            with self.drawing():
                self.draw_final(trainer, pl_module)
