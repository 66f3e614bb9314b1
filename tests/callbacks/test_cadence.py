"""VisualCadence: which epochs get figures, image grids and histograms."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from landseg.callbacks.cadence import FIRST_COST_ESTIMATE, DrawsOnCadence, VisualCadence


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
    for epoch in range(12):
        clock.now += 10.0  # an epoch of training
        if cadence.due(trainer(epoch, max_epochs=12)):
            drawn.append(epoch)
            with cadence.timed():
                clock.now += 4.0  # drawing costs 4 s
    # drawn when spent + last cost <= 0.1 * elapsed. Before any drawing the cost is taken as
    # FIRST_COST_ESTIMATE (2 s): first at epoch 1 (20 s). Then 4 + 4 <= 0.1 * (10 (e + 1) + 4)
    # first holds at e = 7 (84 s); 12 <= 0.1 * (10 (e + 1) + 8) at e = 11, the last epoch,
    # which is drawn anyway.
    assert FIRST_COST_ESTIMATE == 2.0
    assert drawn == [1, 7, 11]
    assert cadence.spent == pytest.approx(12.0)


def test_auto_draws_a_short_run_only_at_its_end() -> None:
    clock = FakeClock()
    cadence = VisualCadence(clock=clock)  # 2 % budget
    cadence.start()
    drawn = []
    for epoch in range(5):
        clock.now += 15.0  # 15 s epochs: 75 s of training buys 1.5 s of drawing
        if cadence.due(trainer(epoch, max_epochs=5)):
            drawn.append(epoch)
    assert drawn == [4]


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


def test_the_next_decision_counts_every_drawing_of_the_last_drawn_epoch() -> None:
    clock = FakeClock()
    cadence = VisualCadence(budget=0.05, clock=clock)
    cadence.start()
    clock.now = 100.0
    assert cadence.due(trainer(1))  # 0 + 2 (the first estimate) <= 0.05 * 100
    for cost in (3.0, 1.0, 1.0):  # figures, image grid, histograms: 5 s in all
        with cadence.timed():
            clock.now += cost
    assert cadence.last_cost == pytest.approx(5.0)
    clock.now = 150.0  # 5 + 5 <= 0.05 * 150 fails (the grid's 1 s alone would pass)
    assert not cadence.due(trainer(2))
    clock.now = 200.0
    assert cadence.due(trainer(3))
