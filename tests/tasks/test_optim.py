"""Optimiser and scheduler parameters: checked against the real torch constructors, typed."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import torch

from landseg.core.errors import ConfigError
from landseg.tasks.optim import (
    SCHEDULERS,
    _validation_optimizer,
    build_optimizer,
    build_scheduler,
    optimizer_problems,
    scheduler_problems,
)

SCHEDULER_CASES: list[tuple[str, dict[str, Any]]] = [
    ("reducelronplateau", {}),
    ("reducelronplateau", {"factor": 2.0}),
    ("reducelronplateau", {"mode": "sideways"}),
    ("reducelronplateau", {"threshold_mode": "abs", "patience": 3, "min_lr": 1e-6}),
    ("cycliclr", {"step_size_up": 5}),
    ("cycliclr", {"mode": "exp_range", "gamma": 0.9}),
    ("cycliclr", {"scale_mode": "nonsense"}),
    ("cosineannealinglr", {"T_max": 4, "eta_min": 0.001}),
    ("cosineannealingwarmrestarts", {"T_0": 0}),
    ("cosineannealingwarmrestarts", {"T_0": 2, "T_mult": 2}),
]


def _real_outcome(name: str, params: dict[str, Any]) -> str | None:
    """What building the scheduler on a real optimizer says: None, or the error's type."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01, momentum=0.9)
    try:
        build_scheduler(name, optimizer, params, 0.01, 8)
    except (TypeError, ValueError, ConfigError) as error:
        return type(error).__name__
    return None


@pytest.mark.parametrize(("name", "params"), SCHEDULER_CASES)
def test_the_validation_optimizer_accepts_and_refuses_what_a_real_one_does(
    name: str, params: dict[str, Any]
) -> None:
    refused_for_real = _real_outcome(name, params) is not None
    assert bool(scheduler_problems(name, params, 0.01, 8)) == refused_for_real
    assert {name for name, _ in SCHEDULER_CASES} == set(SCHEDULERS.names())


def test_validation_optimizer_has_the_param_groups_of_a_real_sgd() -> None:
    real = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01, momentum=0.9)
    stand_in = _validation_optimizer(0.01)
    expected = {k: v for k, v in real.param_groups[0].items() if k != "params"}
    assert {k: v for k, v in stand_in.param_groups[0].items() if k != "params"} == expected


@pytest.mark.parametrize(
    ("kind", "params", "expected"),
    [
        (
            "scheduler",
            {"patience": "two"},
            "patience: ReduceLROnPlateau takes int, got 'two' (str)",
        ),
        ("scheduler", {"cooldown": 1.5}, "cooldown: ReduceLROnPlateau takes int, got 1.5 (float)"),
        ("optimizer", {"nesterov": "maybe"}, "nesterov: SGD takes bool, got 'maybe' (str)"),
        ("optimizer", {"momentum": [0.9]}, "momentum: SGD takes float, got [0.9] (list)"),
    ],
)
def test_values_of_the_wrong_type_are_refused_before_training(
    kind: str, params: dict[str, Any], expected: str
) -> None:
    if kind == "scheduler":
        problems = scheduler_problems("reducelronplateau", params, 0.01, 8)
    else:
        problems = optimizer_problems("sgd", {"momentum": 0.9, **params}, 0.01)
    assert problems == [f"train_setup.{kind}_config.{expected}"]


def test_numbers_written_as_strings_stay_numbers_in_validation_and_training() -> None:
    """YAML 1.1 reads ``1e-7`` as a string: it is the number the user meant, everywhere."""
    assert scheduler_problems("reducelronplateau", {"min_lr": "1e-7"}, 0.01, 8) == []
    assert optimizer_problems("adam", {"eps": "1e-8", "weight_decay": "1e-4"}, 0.01) == []
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer("adam", [parameter], 0.01, {"eps": "1e-8", "weight_decay": "1e-4"})
    assert optimizer.param_groups[0]["eps"] == 1e-8
    assert optimizer.param_groups[0]["weight_decay"] == 1e-4
    scheduler = build_scheduler("reducelronplateau", optimizer, {"min_lr": "1e-7"}, 0.01, 8)
    assert scheduler.min_lrs == [1e-7]


def test_building_with_a_wrong_type_is_a_config_error() -> None:
    parameter = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ConfigError, match="patience: ReduceLROnPlateau takes int"):
        optimizer = build_optimizer("sgd", [parameter], 0.01, {})
        build_scheduler("reducelronplateau", optimizer, {"patience": "two"}, 0.01, 8)


def test_checking_optimiser_parameters_does_not_import_torch_dynamo() -> None:
    """A real optimizer on a real parameter would import torch._dynamo (1 s of CPU)."""
    code = (
        "import sys; from landseg.tasks.optim import optimizer_problems, scheduler_problems;"
        "assert optimizer_problems('adam', {'betas': [0.9, 0.99]}, 0.01) == [];"
        "assert scheduler_problems('reducelronplateau', {}, 0.01, 8) == [];"
        "print('torch._dynamo' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def _parameters() -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_an_optimizer_with_a_fused_kernel_uses_it_unless_the_config_chooses(name: str) -> None:
    assert build_optimizer(name, _parameters(), 0.01, {}).param_groups[0]["fused"] is True
    chosen = build_optimizer(name, _parameters(), 0.01, {"foreach": True}).param_groups[0]
    assert (chosen["foreach"], chosen["fused"]) == (True, None)
    assert (
        build_optimizer(name, _parameters(), 0.01, {"fused": False}).param_groups[0]["fused"]
        is False
    )


def test_an_optimizer_without_a_fused_kernel_is_built_as_torch_would() -> None:
    group = build_optimizer("rmsprop", _parameters(), 0.01, {}).param_groups[0]
    assert "fused" not in group and group["foreach"] is None


def test_parameters_of_a_device_without_fused_kernels_keep_torch_s_default() -> None:
    on_meta = [torch.nn.Parameter(torch.zeros(3, device="meta"))]
    assert build_optimizer("adam", on_meta, 0.01, {}).param_groups[0]["fused"] is None


def test_the_fused_step_is_adam_s_update() -> None:
    """Fused and foreach Adam compute the same update (to float32 rounding), steps apart."""
    fused, plain = _parameters(), _parameters()
    fused_optimizer = build_optimizer("adam", fused, 0.01, {})
    plain_optimizer = build_optimizer("adam", plain, 0.01, {"fused": False})
    for step in range(5):
        for params, optimizer in ((fused, fused_optimizer), (plain, plain_optimizer)):
            optimizer.zero_grad()
            loss = (params[0].sum(0) * params[1] * (step + 1)).square().sum()
            loss.backward()
            optimizer.step()
    for a, b, start in zip(fused, plain, _parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        assert (a - start).abs().min() > 0.01  # five steps of lr 0.01 moved every value


def test_a_continued_run_keeps_the_step_implementation_of_its_checkpoint() -> None:
    """A run started before fused kernels were the default continues with foreach."""
    params = _parameters()
    old = build_optimizer("adam", params, 0.01, {"fused": False})
    params[0].sum().backward()
    old.step()
    old_state = old.state_dict()
    old_state["param_groups"][0]["fused"] = None  # what such a checkpoint records
    continued = build_optimizer("adam", _parameters(), 0.01, {})
    continued.load_state_dict(old_state)
    assert continued.param_groups[0]["fused"] is None


def test_a_scheduler_that_fails_at_its_first_step_is_refused_before_training() -> None:
    """CosineAnnealingLR takes T_max 0, then divides by it after the first epoch."""
    (line,) = scheduler_problems("cosineannealinglr", {"T_max": 0}, 0.01, 8)
    assert line == (
        "train_setup.scheduler_config: CosineAnnealingLR with T_max=0 fails at its first "
        "step: integer modulo by zero"
    )
    assert scheduler_problems("cosineannealinglr", {"T_max": 1}, 0.01, 8) == []
