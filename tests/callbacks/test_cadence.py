"""VisualCadence: which epochs get figures, image grids and histograms."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from landseg.callbacks.cadence import DrawsOnCadence, VisualCadence


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def trainer(epoch: int, max_epochs: int = 10) -> SimpleNamespace:
    return SimpleNamespace(current_epoch=epoch, max_epochs=max_epochs)


def test_every_n_epochs_draws_the_first_multiples_and_the_last() -> None:
    cadence = VisualCadence(every_n_epochs=3)
    drawn = [e for e in range(10) if cadence.due(trainer(e))]
    assert drawn == [0, 3, 6, 9]


def test_auto_keeps_drawing_within_the_budget() -> None:
    clock = FakeClock()
    cadence = VisualCadence(budget=0.1, clock=clock)
    cadence.start()
    drawn = []
    for epoch in range(10):
        clock.now += 10.0  # an epoch of training
        if cadence.due(trainer(epoch)):
            drawn.append(epoch)
            with cadence.timed():
                clock.now += 4.0  # drawing costs 4 s
    # epoch 0 always; then drawn when spent + last cost (4 + 4) <= 0.1 * elapsed, where
    # elapsed = 10 (e + 1) + 4 at epoch e: first at e = 7 (84 s); then 12 <= 0.1 * 98 fails
    # at epoch 8; epoch 9 is the last, always drawn
    assert drawn == [0, 7, 9]
    assert cadence.spent == pytest.approx(12.0)


def test_one_answer_per_epoch() -> None:
    clock = FakeClock()
    cadence = VisualCadence(budget=0.5, clock=clock)
    cadence.start()
    clock.now = 100.0
    with cadence.timed():
        clock.now += 1.0
    first = cadence.due(trainer(3))
    clock.now += 1000.0  # the budget would now allow it; the epoch's answer stands
    assert cadence.due(trainer(3)) is first


def test_a_skipped_occasion_is_owed_until_drawn() -> None:
    schedule = DrawsOnCadence(VisualCadence(every_n_epochs=2))
    assert schedule.should_draw(trainer(0)) and not schedule.owes()
    assert not schedule.should_draw(trainer(1)) and schedule.owes()
    with schedule.drawing():
        pass
    assert not schedule.owes()


@pytest.mark.parametrize("bad", [{"every_n_epochs": 0}, {"budget": 0.0}, {"budget": 1.0}])
def test_bad_arguments(bad: dict) -> None:
    with pytest.raises(ValueError):
        VisualCadence(**bad)
