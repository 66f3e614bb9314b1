"""device_setup: names checked without importing Lightning, and decoded in one place."""

from __future__ import annotations

from typing import Any

import pytest

from landseg.config.schema import ACCELERATORS, STRATEGIES, DeviceSetup


def test_static_names_are_lightnings_own() -> None:
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    assert set(ACCELERATORS) == {*AcceleratorRegistry.available_accelerators(), "auto", "gpu"}
    assert set(STRATEGIES) == {*StrategyRegistry.available_strategies(), "auto"}


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"device": 0}, {"accelerator": "cpu", "devices": 1, "strategy": "auto"}),
        ({"accelerator": "cpu", "num_processes": 2}, {"devices": 2, "strategy": "ddp"}),
        ({"accelerator": "gpu", "device": "0,1"}, {"devices": [0, 1], "strategy": "auto"}),
        ({"accelerator": "gpu", "device": [2]}, {"devices": [2]}),
        ({}, {"accelerator": "auto", "devices": "auto", "num_nodes": 1}),
    ],
)
def test_lightning_args(keys: dict[str, Any], expected: dict[str, Any]) -> None:
    args = DeviceSetup(**keys).lightning_args()
    assert {key: args[key] for key in expected} == expected


@pytest.mark.parametrize(
    ("keys", "starts"),
    [
        ({}, False),
        ({"device": 2}, True),
        ({"device": "0,1"}, True),
        ({"device": [3]}, False),
        ({"num_processes": 2}, True),
        ({"num_nodes": 2}, True),
        ({"strategy": "ddp_spawn"}, True),
    ],
)
def test_starts_processes(keys: dict[str, Any], starts: bool) -> None:
    assert DeviceSetup(**keys).starts_processes() is starts


def test_problems_name_the_key() -> None:
    assert DeviceSetup(accelerator="gpuu", strategy="dpp", device="0;1").problems() == [
        "device_setup.accelerator: unknown accelerator 'gpuu' (did you mean 'gpu'?); "
        "valid: auto, cpu, cuda, gpu, mps, tpu",
        f"device_setup.strategy: unknown strategy 'dpp' (did you mean 'ddp'?); valid: "
        f"{', '.join(sorted(STRATEGIES))}",
        'device_setup.device: expected a device id such as "0" or "0,1", got \'0;1\'',
    ]
