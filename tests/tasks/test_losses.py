"""Losses: hand-computed values, ignored (-1) pixels never count, class weights behave."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from landseg.core.errors import ConfigError
from landseg.tasks.losses import LOSSES, build_loss

C = 3


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits and labels (2, C, 4, 6); columns 4 and 5 are unlabelled (-1)."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, C, 4, 6, generator=generator)
    target = torch.randint(0, C, (2, 4, 6), generator=generator)
    target[..., 4:] = -1
    return logits, target


def test_ce_on_two_pixels_matches_the_formula() -> None:
    logits = torch.tensor([[[[2.0, 0.5]], [[1.0, -1.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    p0 = math.exp(2.0) / (math.exp(2.0) + math.exp(1.0))
    p1 = math.exp(-1.0) / (math.exp(0.5) + math.exp(-1.0))
    expected = -(math.log(p0) + math.log(p1)) / 2
    assert build_loss("ce", 2)(logits, target).item() == pytest.approx(expected, rel=1e-6)
    weighted = build_loss("ce", 2, [1.0, 3.0])(logits, target).item()
    assert weighted == pytest.approx(-(math.log(p0) + 3 * math.log(p1)) / 4, rel=1e-6)


def test_ce_equals_torch_with_weights(batch) -> None:
    logits, target = batch
    weights = [0.5, 2.0, 1.0]
    reference = nn.CrossEntropyLoss(weight=torch.tensor(weights), ignore_index=-1)
    loss = build_loss("ce", C, weights)(logits, target)
    assert loss.item() == pytest.approx(reference(logits, target).item(), rel=1e-6)


def test_bce_on_two_pixels_matches_the_formula() -> None:
    logits = torch.tensor([[[[2.0, 0.5]], [[1.0, -1.0]]]])
    target = torch.tensor([[[0, -1]]])  # the second pixel is unlabelled

    def log_sigmoid(x: float) -> float:
        return -math.log1p(math.exp(-x))

    expected = -(log_sigmoid(2.0) + log_sigmoid(-1.0)) / 2  # one pixel, classes 0 and 1
    assert build_loss("bce", 2)(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_focal_matches_the_paper(batch) -> None:
    logits, target = batch
    alpha = torch.tensor([0.25, 1.0, 2.0])
    valid = target >= 0
    labels = target[valid]
    p_t = logits.softmax(1).permute(0, 2, 3, 1)[valid].gather(1, labels[:, None]).squeeze(1)
    terms = -alpha[labels] * (1 - p_t) ** 2 * torch.log(p_t)
    expected = terms.sum() / alpha[labels].sum()
    loss = build_loss("focal", C, alpha.tolist())(logits, target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_combo_is_three_quarters_bce_plus_a_quarter_jaccard(batch) -> None:
    logits, target = batch
    bce = build_loss("bce", C)(logits, target)
    jaccard = build_loss("jaccard", C)(logits, target)
    combo = build_loss("combo", C)(logits, target)
    assert combo.item() == pytest.approx((0.75 * bce + 0.25 * jaccard).item(), rel=1e-6)


@pytest.mark.parametrize("name", ["dice", "jaccard"])
def test_soft_overlap_losses_vanish_on_a_perfect_prediction(batch, name: str) -> None:
    _, target = batch
    logits = 50.0 * nn.functional.one_hot(target.clamp_min(0), C).permute(0, 3, 1, 2).float()
    assert build_loss(name, C)(logits, target).item() == pytest.approx(0.0, abs=1e-5)
    wrong = torch.roll(logits, shifts=1, dims=1)
    assert build_loss(name, C)(wrong, target).item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("name", LOSSES.names())
def test_ignored_pixels_do_not_count(batch, name: str) -> None:
    logits, target = batch
    loss = build_loss(name, C)
    with_ignored = loss(logits, target)
    cropped = loss(logits[..., :4], target[..., :4])
    assert with_ignored.item() == pytest.approx(cropped.item(), rel=1e-6)
    # whatever the model predicts at unlabelled pixels
    changed = logits.clone()
    changed[..., 4:] = 100.0 * torch.randn_like(changed[..., 4:])
    assert loss(changed, target).item() == pytest.approx(with_ignored.item(), rel=1e-6)


@pytest.mark.parametrize("name", ["ce", "focal"])
def test_zero_weight_drops_a_class(batch, name: str) -> None:
    logits, target = batch
    dropped = torch.where(target == 1, -1, target)
    weighted = build_loss(name, C, [1.0, 0.0, 1.0])(logits, target)
    assert weighted.item() == pytest.approx(build_loss(name, C)(logits, dropped).item(), rel=1e-6)


@pytest.mark.parametrize("name", ["ce", "focal"])
def test_only_zero_weight_pixels_give_zero_not_nan(name: str) -> None:
    logits = torch.randn(1, C, 2, 2, requires_grad=True)
    target = torch.tensor([[[1, 1], [-1, 1]]])
    loss = build_loss(name, C, [1.0, 0.0, 1.0])(logits, target)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", LOSSES.names())
def test_all_unlabelled_gives_zero(name: str) -> None:
    logits = torch.randn(1, C, 2, 2)
    assert build_loss(name, C)(logits, torch.full((1, 2, 2), -1)).item() == 0.0


@pytest.mark.parametrize("name", LOSSES.names())
def test_gradients_are_finite_even_for_extreme_logits(batch, name: str) -> None:
    logits, target = batch
    logits = (logits * 100.0).requires_grad_()
    loss = build_loss(name, C)(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[..., 4:].abs().sum() == 0  # unlabelled pixels get no gradient


def test_class_weights_are_checked() -> None:
    assert [n for n in LOSSES.names() if LOSSES.info(n)["supports_class_weights"]] == [
        "ce",
        "focal",
    ]
    with pytest.raises(ConfigError, match="loss 'bce' cannot use class weights"):
        build_loss("bce", C, [1.0, 1.0, 1.0])
    with pytest.raises(ConfigError, match="2 weights but there are 3 classes"):
        build_loss("ce", C, [1.0, 1.0])
    with pytest.raises(ConfigError, match="every weight is 0"):
        build_loss("focal", C, [0.0, 0.0, 0.0])
    with pytest.raises(ConfigError, match="did you mean 'focal'"):
        build_loss("focall", C)
