"""Runs trained once per session: uninterrupted references, and finished runs that a test
continues, refuses or damages.

Training the same config again in every test that compares against it, or that needs it
finished, proves nothing more: the run is trained the first time a test asks for its config,
under the session's temporary folder. A reference is only read after that (``final_state``);
a finished run is put back from a copy for each test that asks for it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from landseg.cli.main import main
from tests.helpers import write_config

#: The keys that name where a run is written, not what it computes: left out of the key under
#: which a reference is kept (the SLURM test's run folder is its job's, its reference's not).
WHERE = ("output_folder", "name_exp_log", "version_name")


def reference_key(config: dict[str, Any]) -> str:
    """The config less where its run is written, as sorted JSON."""
    config = json.loads(json.dumps(config))
    for key in WHERE:
        config["output_setup"].pop(key, None)
    return json.dumps(config, sort_keys=True)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[dict[str, Any]], Path]:
    """``reference_run(config)``: the run folder of ``config`` trained without interruption,
    once per session (the same config again gives the same folder); read it, never write."""
    runs: dict[str, Path] = {}

    def trained(config: dict[str, Any]) -> Path:
        key = reference_key(config)
        if key not in runs:
            folder = tmp_path_factory.mktemp("reference")
            reference = json.loads(key)
            reference["output_setup"].update(
                output_folder=str(folder / "runs"), name_exp_log="exp", version_name="reference"
            )
            assert main(["train", "-c", str(write_config(folder / "ref.json", reference))]) == 0
            runs[key] = folder / "runs" / "exp" / "reference"
        return runs[key]

    return trained


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[dict[str, Any]], Path]:
    """``finished_run(config)``: an output folder where ``config``'s run lies finished, exactly
    as training left it; returns that output folder (``config``'s own is not used).

    The run is trained once per session at that place and a copy is kept aside; each call puts
    the copy back (``shutil.copytree``: the same bytes and times), over whatever the previous
    test made of it. The run stays where it was trained: its config.json, run.json and
    checkpoints name the folder it lies in, as a freshly trained run's do."""
    places: dict[str, Path] = {}

    def restore(config: dict[str, Any]) -> Path:
        config = json.loads(json.dumps(config))
        config["output_setup"].pop("output_folder")
        key = json.dumps(config, sort_keys=True)
        if key not in places:
            place = tmp_path_factory.mktemp("finished")
            config["output_setup"]["output_folder"] = str(place / "runs")
            assert main(["train", "-c", str(write_config(place / "c.json", config))]) == 0
            shutil.copytree(place / "runs", place / "kept", symlinks=True)
            places[key] = place
        place = places[key]
        shutil.rmtree(place / "runs", ignore_errors=True)
        shutil.copytree(place / "kept", place / "runs", symlinks=True)
        return place / "runs"

    return restore
