"""What a GPU run must do that no CPU test can show (issue 14): ``precision: auto`` picks bf16
and channels-last on the GPU itself (not pretended), the loader workers send compact uint8
batches that the GPU scales into exactly the batches of a run without workers, and a
deterministic run is bit-identical run to run, its weights float32.

Skipped where torch sees no CUDA GPU (CI, and the CPU machines the suite runs on).
``benchmarks/gpu_session.sh`` runs them, with the resume tests, on a lent GPU machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from landseg.cli.main import main
from landseg.data.datamodule import CsvSegmentationDataModule
from landseg.launch.hardware import choose_fast_paths
from tests.helpers import final_state, write_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")


def test_auto_picks_bf16_and_channels_last_on_a_gpu_from_ampere_on() -> None:
    major, _ = torch.cuda.get_device_capability()
    chosen = choose_fast_paths("auto", "auto", "gpu")
    expected = ("bf16-mixed", True) if major >= 8 else ("32-true", False)
    assert (chosen.precision, chosen.channels_last) == expected, chosen.reason


def test_a_gpu_run_scales_compact_batches_and_is_bit_identical_run_to_run(
    demo_config: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[torch.dtype, str]] = []
    original = CsvSegmentationDataModule.on_after_batch_transfer

    def recording(self: CsvSegmentationDataModule, batch, dataloader_idx: int):
        seen.append((batch["image"].dtype, batch["image"].device.type))
        return original(self, batch, dataloader_idx)

    monkeypatch.setattr(CsvSegmentationDataModule, "on_after_batch_transfer", recording)
    demo_config["device_setup"].update(accelerator="gpu", device=1)
    demo_config["train_setup"].update(epochs=2, batch_size=4, deterministic=True)
    demo_config["output_setup"].update(
        name_exp_log="exp", use_tensorboard=False, get_prediction=False
    )
    demo_config["data_source"]["data_augmentation"] = {"train": ["rotation90"]}
    demo_config["data_source"].pop("test_file")
    runs = {}
    for version, workers in (("plain", 0), ("compact", 2), ("compact-again", 2)):
        demo_config["device_setup"]["num_workers"] = workers
        demo_config["output_setup"]["version_name"] = version
        path = write_config(tmp_path / f"{version}.json", demo_config)
        assert main(["train", "-c", str(path)]) == 0
        runs[version] = tmp_path / "runs" / "exp" / version
    # compact uint8 batches reached the GPU from the workers; plain float32 ones without them
    assert (torch.uint8, "cuda") in seen and (torch.float32, "cuda") in seen
    state = json.loads((runs["compact"] / "run.json").read_text())
    major, _ = torch.cuda.get_device_capability()
    if major >= 8:
        assert (state["precision"], state["channels_last"]) == ("bf16-mixed", True)
    plain, compact, again = (final_state(run) for run in runs.values())
    assert compact[0] == again[0] and compact[2] == again[2] and compact[3] == again[3]
    for key, value in compact[1].items():
        assert torch.equal(again[1][key], value), key  # run to run, bit for bit
        assert value.dtype != torch.bfloat16, key  # weights stay float32
    # scaled on the GPU, the compact batches are the plain batches: the same training
    assert plain[0] == compact[0]
    for key, value in plain[1].items():
        assert torch.equal(compact[1][key], value), key
