"""A trained demo run through ``runs``, ``report`` (checked in headless chromium) and ``archive``,
then predicted and evaluated by its archived name. The tests that use the trained run are
``slow`` (its training is theirs)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from landseg.cli.main import main
from landseg.reports.report import curve_rows
from tests.helpers import read, write_config

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
TILING = ["--tile", "32", "--overlap", "8", "--no-progress", "--device", "cpu"]


def train_demo(demo_dir: Path, tmp: Path, precision: str, **output: bool) -> Path:
    """A 2-epoch demo run in ``precision`` (TensorBoard on unless ``output`` says, test split
    predicted as float32 probabilities); returns its run folder."""
    config = json.loads((demo_dir / "demo.json").read_text())
    for key in ("train_file", "val_file", "test_file"):
        config["data_source"][key] = str(demo_dir / config["data_source"][key])
    config["train_setup"].update(epochs=2, batch_size=8)
    config["output_setup"].update(
        output_folder=str(tmp / "runs"),
        progress=0,
        name_exp_log="exp",
        version_name="v1",
        prediction_output_type="float32",
        **output,
    )
    config["device_setup"]["precision"] = precision
    assert main(["train", "-c", str(write_config(tmp / "c.json", config))]) == 0
    return tmp / "runs" / "exp" / "v1"


@pytest.fixture(scope="module")
def trained(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo run of these tests, in float32: ``precision: auto`` would pick bf16 or float32
    by host, and the archive test compares the run's test results with evaluate's exactly."""
    return train_demo(demo_dir, tmp_path_factory.mktemp("report"), "32-true")


@pytest.fixture(scope="module")
def trained_bf16(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run in bf16-mixed, the precision most modern machines train in (``auto``
    picks it where the hardware computes bf16 natively; bf16 autocast runs on any CPU).

    Its one test compares the test stage with evaluate and archives it: no TensorBoard (the
    report falls back on the history for its curves). Its 2 epochs stay: after 1, the test
    stage's confusion matrix came out the same in bf16 as in float32, and the comparison
    passed with the test stage run in the trained precision."""
    folder = tmp_path_factory.mktemp("report-bf16")
    return train_demo(demo_dir, folder, "bf16-mixed", use_tensorboard=False)


def chromium(page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        "--window-size=1200,2000",
        *args,
        page.absolute().as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.slow
def test_runs_lists_the_demo_run(trained: Path, capsys) -> None:
    assert main(["runs", str(trained.parents[1]), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["experiment"], row["version"], row["status"]) == ("exp", "v1", "finished")
    assert row["epochs_done"] == 2 and row["data"] == "train.csv" and row["val_miou"] > 0


@pytest.mark.slow
def test_report_page_is_self_contained(trained: Path) -> None:
    assert main(["report", str(trained), "--samples", "3", "--device", "cpu"]) == 0
    folder = trained / "report"
    names = {p.name for p in folder.iterdir()}
    assert names >= {
        "index.html",
        "learning_curves.png",
        "confusion.png",
        "confusion_normalized.png",
        "per_class.png",
        "samples.png",
    }
    page = (folder / "index.html").read_text()
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) == 5 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing to fetch
    assert "building" in page and "test split" in page and "finished" in page


@pytest.mark.slow
def test_report_renders_in_chromium(trained: Path, tmp_path: Path) -> None:
    """Skipped on a machine without chromium, but a failure in CI (CI=true, as GitHub Actions,
    GitLab CI and most others set it): there the browser check must run."""
    import matplotlib.image

    if CHROMIUM is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed, and CI must check the report in a browser")
        pytest.skip("chromium is not installed")

    page = trained / "report" / "index.html"
    if not page.exists():
        assert main(["report", str(trained), "--samples", "3", "--device", "cpu"]) == 0
    dom = chromium(page, tmp_path, "--dump-dom").stdout
    body = re.search(r"<body[^>]*>", dom)
    assert body is not None
    assert 'data-images="ok"' in body.group(0) and 'data-image-count="5"' in body.group(0)

    shot = tmp_path / "shot.png"
    chromium(page, tmp_path, f"--screenshot={shot}")
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1200)
    not_white = (pixels < 0.9).any(axis=-1).mean()
    assert not_white > 0.03 and pixels.std() > 0.05  # text and figures, not a blank page


def test_curves_fall_back_on_the_history(tmp_path: Path) -> None:
    """Without logs/scalars.jsonl (TensorBoard off), curves come from history.json."""
    history = {
        "0": {"loss": 1.0, "Average/IoU": 0.2, "learning rate": 0.01, "step": 3},
        "1": {"loss": 0.8, "Average/IoU": 0.3, "learning rate": 0.005, "step": 6},
    }
    rows = curve_rows(tmp_path, history)
    val = [r for r in rows if r["phase"] == "val"]
    assert [(r["epoch"], r["loss"], r["miou"]) for r in val] == [(0, 1.0, 0.2), (1, 0.8, 0.3)]
    assert [r["lr"] for r in rows if "lr" in r] == [0.01, 0.005]


def test_report_of_a_run_without_history(tmp_path: Path) -> None:
    """A run that died before its first validation still gets a page, saying what is missing."""
    run = tmp_path / "exp" / "v1"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"status": "failed", "error": "OSError: disk"}))
    assert main(["report", str(run)]) == 0
    page = (run / "report" / "index.html").read_text()
    assert "No confusion matrix" in page and "No sample tiles" in page and "OSError" in page
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 1  # empty curves


@pytest.mark.slow
@pytest.mark.parametrize("run", ["trained", "trained_bf16"])
def test_archive_then_use_by_name(
    run: str, demo_dir: Path, tmp_path: Path, capsys, request: pytest.FixtureRequest
) -> None:
    """Archived, the run is predicted and evaluated by name; evaluate's confusion matrix is the
    one the run's own test wrote in history_test.json, in float32 and in bf16-mixed."""
    trained: Path = request.getfixturevalue(run)
    runs = tmp_path / "runs"
    shutil.copytree(trained.parents[1], runs)
    assert main(["archive", str(runs / "exp" / "v1")]) == 0
    name = f"archived_v1_{dt.date.today().isoformat()}"
    archived = runs / "exp" / name
    assert json.loads((archived / "run.json").read_text())["archived"]["from"] == "exp/v1"
    assert json.loads((runs / "archive.json").read_text())["archived"][0]["name"] == name
    assert main(["archive", str(archived)]) == 2
    assert "already archived" in capsys.readouterr().err

    where = ["--output-folder", str(runs)]
    test_csv = str(demo_dir / "test.csv")
    out = tmp_path / "pred"
    args = ["predict", "--run", name, "--input", test_csv, "--output", str(out)]
    assert main([*args, *where, *TILING]) == 0
    assert len(list(out.glob("*.tif"))) == len(Path(test_csv).read_text().split())

    # the run's own test predictions (predict_split) and the CLI's agree on the classes
    for path in out.glob("*.tif"):
        probabilities = read(archived / "predictions" / path.name)
        assert np.array_equal(read(path)[0], probabilities.argmax(axis=0))

    assert main(["evaluate", "--run", name, "--csv", test_csv, *where, *TILING]) == 0
    entry = json.loads((archived / "evaluation" / "test" / "evaluation.json").read_text())
    test_history = json.loads((archived / "history_test.json").read_text())
    assert entry["cm_macro"] == next(iter(test_history.values()))["cm_macro"]
    assert main(["report", name, *where, "--samples", "0"]) == 0
    assert "archived_v1" in (archived / "report" / "index.html").read_text()


@pytest.mark.slow
def test_report_of_a_gpu_run_on_a_machine_without_one(trained: Path, tmp_path: Path) -> None:
    """The devices a run was trained on need not be where its report is made."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    run = shutil.copytree(trained, tmp_path / "exp" / "gpu-run")
    for path in (run / "checkpoints").glob("*.ckpt"):
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["hyper_parameters"]["config"]["device_setup"]["accelerator"] = "gpu"
        torch.save(checkpoint, path)
    assert main(["report", str(run), "--samples", "2", "--device", "cpu"]) == 0
    assert (run / "report" / "samples.png").is_file()  # the sample tiles were predicted
    assert "No sample tiles" not in (run / "report" / "index.html").read_text()


def test_report_paints_the_runs_class_colours(trained: Path, tmp_path: Path) -> None:
    """The sample tiles and their legend use ``output_setup.class_colors``, as the COG colour
    table, the .qml and the exports do, not the default palette."""
    import torch
    from matplotlib.colors import to_hex

    from landseg.reports.report import sample_tiles

    colours = ["#102030", "#405060", "#708090", "#a0b0c0"]
    run = shutil.copytree(trained, tmp_path / "exp" / "coloured")
    for path in (run / "checkpoints").glob("*.ckpt"):
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["hyper_parameters"]["config"]["output_setup"]["class_colors"] = colours
        torch.save(checkpoint, path)
    fig, _ = sample_tiles(run, 2, "cpu")
    legend = [to_hex(patch.get_facecolor()) for patch in fig.legends[0].get_patches()]
    assert legend == [*colours, "#000000"]  # the classes, then "no label"
    mask = fig.axes[1].get_images()[0].get_array()
    painted = {"#{:02x}{:02x}{:02x}".format(*pixel) for pixel in np.asarray(mask).reshape(-1, 3)}
    assert painted and painted <= {*colours, "#000000"}


def test_report_of_a_cv_job_folder_says_where_its_summary_is(tmp_path: Path, capsys) -> None:
    """A cv job folder (it holds job.sqlite) is not called 'not a run folder': the line says
    what it is, where its summary is and where its task runs are."""
    job = tmp_path / "job"
    job.mkdir()
    (job / "job.sqlite").write_bytes(b"")
    assert main(["report", str(job)]) == 2
    err = capsys.readouterr().err
    assert "not a run folder (no" not in err
    assert f"{job}: a cross-validation job folder" in err
    assert str(job / "summary.md") in err and str(job / "tasks") in err
