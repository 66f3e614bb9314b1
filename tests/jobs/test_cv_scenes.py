"""Cross-validation on scene rows (data_source.windows): groups of scenes, spatial blocks of
grid windows, and what a task's training may never see."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from landseg.config.cross_validation import CrossValidation
from landseg.config.schema import Windows
from landseg.core.files import write_geotiff
from landseg.data.csvfiles import read_pairs
from landseg.data.sampler import derive_seed
from landseg.data.scenes import LabelSettings, SceneDataset, scene_dataset
from landseg.data.summary import IGNORE_INDEX
from landseg.jobs.plan import build_plan, group_rows, task_csvs

shapely = pytest.importorskip("shapely")
pyogrio = pytest.importorskip("pyogrio")

UTM = CRS.from_epsg(32633)
#: 1 m pixels; the 64 m blocks' edges cross the scenes 18 and 82 m from their top-left corner
ORIGIN = (511_982.0, 5_120_018.0)
SIZE, SCENE, BUFFER, SEED = 32, 100, 6.0, 11
SETTINGS = LabelSettings(image_bands=None, mask_bands=None, n_classes=3, class_labels="abc")
OPTIONS = {"image_bands": None, "mask_bands": None, "n_classes": 3, "pixel_range": 255.0}


def write_scene(folder: Path, name: str, east: int, seed: int) -> tuple[Path, Path]:
    """A 100x100 scene ``east`` pixels east of the origin; a few unlabelled label pixels."""
    rng = np.random.default_rng(seed)
    transform = Affine(1.0, 0, ORIGIN[0] + east, 0, -1.0, ORIGIN[1])
    image = rng.integers(1, 256, (3, SCENE, SCENE)).astype(np.uint8)
    labels = rng.integers(0, 3, (SCENE, SCENE)).astype(np.uint8)
    labels[:4, :7] = 255
    write_geotiff(folder / f"{name}.tif", image, crs=UTM, transform=transform, nodata=0)
    write_geotiff(folder / f"{name}_l.tif", labels, crs=UTM, transform=transform, nodata=255)
    return folder / f"{name}.tif", folder / f"{name}_l.tif"


def write_aoi(path: Path, left: float, bottom: float, right: float, top: float) -> Path:
    geometry = np.array([shapely.to_wkb(shapely.geometry.box(left, bottom, right, top))])
    pyogrio.raw.write(
        path, geometry, [np.array([1])], ["id"], crs=UTM.to_wkt(), geometry_type="Polygon"
    )
    return path


@pytest.fixture
def scenes(tmp_path: Path) -> Path:
    """Three scenes side by side (a, b, c from west to east); b has an AOI on its west 80 m.
    ``zones.csv`` puts a and c in zone north, b in south; ``blocks.csv`` lists a and b."""
    write_scene(tmp_path, "a", 0, 1)
    write_scene(tmp_path, "b", SCENE, 2)
    write_scene(tmp_path, "c", 2 * SCENE, 3)
    left, top = ORIGIN[0] + SCENE, ORIGIN[1]
    write_aoi(tmp_path / "b_aoi.geojson", left, top - SCENE, left + 80, top)
    rows = "a.tif,a_l.tif,,north\nb.tif,b_l.tif,b_aoi.geojson,south\n"
    (tmp_path / "blocks.csv").write_text("image,labels,aoi,zone\n" + rows)
    (tmp_path / "zones.csv").write_text("image,labels,aoi,zone\n" + rows + "c.tif,c_l.tif,,north\n")
    return tmp_path


def dataset(csv: Path, samples: int | None = None) -> SceneDataset:
    return scene_dataset(
        read_pairs(csv),
        size=SIZE,
        stride=SIZE,
        samples_per_epoch=samples,
        max_nodata=0.5,
        settings=SETTINGS,
        seed=SEED,
        **OPTIONS,
    )


def write_csvs(folder: Path, csvs: dict[str, str]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {split: folder / f"{split}.csv" for split in csvs}
    for split, text in csvs.items():
        paths[split].write_text(text)
    return paths


def footprint(pair) -> tuple[float, float, float, float]:  # type: ignore[no-untyped-def]
    row, col, height, width = pair.window
    with_scene = {"a.tif": 0, "b.tif": SCENE}[pair.image.name]
    left, top = ORIGIN[0] + with_scene + col, ORIGIN[1] - row
    return (left, top - height, left + width, top)


def test_group_column_and_pattern_keep_each_scene_row_whole_with_its_aoi(scenes: Path) -> None:
    """A scene row is a member of its group like a tile row; its task CSV rows keep the AOI
    (the third column), so the task reads the scene exactly as the user's CSV says."""
    pairs = read_pairs(scenes / "zones.csv")
    for cv in (
        CrossValidation(group_column="zone", test_groups=["south"], validation=0),
        CrossValidation(group_pattern=r"/(a|b|c)\.tif$", test_groups=["b"], validation=1),
    ):
        rows = group_rows(pairs, cv, scenes / "zones.csv", Windows(size=SIZE))
        assert [(row.image.name, row.aoi) for row in rows] == [
            ("a.tif", None),
            ("b.tif", scenes / "b_aoi.geojson"),
            ("c.tif", None),
        ]
        plan, used = build_plan(rows, cv, 0.5)
        (task,) = plan.tasks
        paths = write_csvs(scenes / task.id, task_csvs(task, used))
        (test,) = read_pairs(paths["test"])
        assert (test.image.name, test.aoi) == ("b.tif", scenes / "b_aoi.geojson")
        train = [(pair.image.name, pair.aoi) for pair in read_pairs(paths["train"])]
        if cv.group_column:  # a and c, split by percentage_val when the task is trained
            assert train == [("a.tif", None), ("c.tif", None)]
        else:
            assert train == [("a.tif", None)]
            assert [pair.image.name for pair in read_pairs(paths["val"])] == ["c.tif"]
        # the AOI is applied: b's grid has its eastern windows unlabelled
        masks = [item["mask"] for item in dataset(paths["test"])]
        assert len(masks) == 16
        assert all((mask == IGNORE_INDEX).all() for mask in masks[3::4])  # cols 68..100
        assert not all((mask == IGNORE_INDEX).all() for mask in masks[0::4])
    # without windows the rows are tiles: a third column is no AOI, the task CSVs keep two
    cv = CrossValidation(group_column="zone", test_groups=["south"], validation=0)
    rows = group_rows(pairs, cv, scenes / "zones.csv")
    plan, used = build_plan(rows, cv, 0.5)
    assert all(row.aoi is None for row in rows)
    for text in task_csvs(plan.tasks[0], used).values():
        assert all(len(line.split(",")) == 2 for line in text.splitlines()), text


def block_job(scenes: Path, buffer: float, *tests: str, validation: int = 1) -> tuple[list, list]:  # type: ignore[type-arg]
    """Blocks of 64 m, each its own group; one task per test block (``tests``: those only)."""
    cv = CrossValidation(
        spatial_blocks={"size": 64, "buffer": buffer},
        validation=validation,
        test_groups=[[block] for block in tests] or None,
    )
    csv = scenes / "blocks.csv"
    rows = group_rows(read_pairs(csv), cv, csv, Windows(size=SIZE))
    plan, used = build_plan(rows, cv, 0.5)
    return list(plan.tasks), used


def test_spatial_blocks_cut_each_scene_s_grid_windows_into_blocks(scenes: Path) -> None:
    """With windows, the spatial blocks' rows are the grid windows (4x4 per 100 px scene,
    the last one flush with the edge); each labelled pixel is in exactly one test fold."""
    tasks, used = block_job(scenes, 0.0)
    assert len(used) == 32
    assert {row.window for row in used} == {
        (r, c) for r in (0, 32, 64, 68) for c in (0, 32, 64, 68)
    }
    # 64 m blocks, their edges 18 and 82 m from the scenes' top and left: window centres
    # at 16 | 48, 80 | 84 (a) 116 | 148 ... so the flush last windows are in other blocks
    blocks = {(row.image.name, row.window): row.block for row in used}
    assert blocks["a.tif", (0, 0)] == "block-7999-80000"
    assert blocks["a.tif", (32, 32)] == blocks["a.tif", (64, 64)] == "block-8000-79999"
    assert blocks["a.tif", (0, 68)] == blocks["b.tif", (0, 0)] == "block-8001-80000"
    assert blocks["a.tif", (68, 68)] == "block-8001-79998"

    labelled = {name: np.zeros((SCENE, SCENE), dtype=np.int64) for name in ("a.tif", "b.tif")}
    whole = {name: np.zeros((SCENE, SCENE), dtype=np.int64) for name in ("a.tif", "b.tif")}
    subjects = {}
    for task in tasks:
        subjects.setdefault(task.test, task)
    assert len(subjects) == 12  # 4 block columns (a: 3, b: 2, one shared) x 3 rows
    for number, task in enumerate(subjects.values()):
        paths = write_csvs(scenes / f"t{number}", task_csvs(task, used))
        test = dataset(paths["test"])
        for pair in test.pairs:
            _, mask, _ = test.reader.read(pair)
            row, col, _, _ = pair.window
            labelled[pair.image.name][row : row + SIZE, col : col + SIZE] += mask != IGNORE_INDEX
    everything = dataset(scenes / "blocks.csv")
    for pair in everything.pairs:  # the whole grid, every scene, no cross-validation
        _, mask, _ = everything.reader.read(pair)
        row, col, _, _ = pair.window
        whole[pair.image.name][row : row + SIZE, col : col + SIZE] += mask != IGNORE_INDEX
    for name in labelled:
        np.testing.assert_array_equal(labelled[name], whole[name])
        assert set(np.unique(whole[name])) == {0, 1}  # once, or never (nodata, outside the AOI)
    assert whole["a.tif"].sum() == SCENE * SCENE - 28
    assert whole["b.tif"].sum() == 80 * SCENE - 28


@pytest.mark.parametrize(("buffer", "validation"), [(BUFFER, 0), (0.0, 1)])
def test_no_training_window_comes_near_its_task_s_test_windows(
    scenes: Path, buffer: float, validation: int
) -> None:
    """Every random training window drawn over two epochs, and every grid training window,
    lies outside the task's test windows and their buffer (exact rectangle distance), and
    off its validation windows: no test pixel is ever a training input. Without a buffer,
    the grid windows that overlap a test window (the flush last ones) are left out too.
    (With a buffer, validation is a share of the training scenes: on scenes this small,
    every neighbouring block lies within the buffer.)"""
    # the block both scenes share, one of flush windows only, one in b's north-east
    tests = ("block-8001-80000", "block-7999-79998", "block-8002-80000")
    tasks, used = block_job(scenes, buffer, *tests, validation=validation)
    assert len(tasks) == 3
    near_test = 0
    for number, task in enumerate(tasks):
        paths = write_csvs(scenes / f"t{number}", task_csvs(task, used))
        test = [shapely.geometry.box(*footprint(p)) for p in dataset(paths["test"]).pairs]
        val = (
            [shapely.geometry.box(*footprint(p)) for p in dataset(paths["val"]).pairs]
            if validation
            else []
        )
        assert test and (val or not validation)
        train = dataset(paths["train"], samples=32)
        assert train.random is not None
        drawn = [
            train.random.draw(derive_seed(SEED, epoch, index), train.reader)[0]
            for epoch in range(2)
            for index in range(len(train))
        ]
        drawn += dataset(paths["train"]).pairs  # the training grid without samples_per_epoch
        for pair in drawn:
            window = shapely.geometry.box(*footprint(pair))
            assert min(window.distance(box) for box in test) >= buffer, (task.id, pair.where())
            assert max(window.intersection(box).area for box in test + val) == 0, pair.where()
            near_test += min(window.distance(box) for box in test) < buffer + 4
    assert near_test > 0  # windows do come up to the buffer: the check is not vacuous


# ---------------------------------------------------------------------------- landseg cv


def cv_scene_config(scenes: Path, output: Path, **cross_validation: object) -> dict:
    """A tiny lightunet job on the two scenes of ``blocks.csv``: random windows of 32 px,
    2 epochs of 2 steps; float32 and one thread pinned (jobs run in several ways must
    agree to the bit)."""
    return {
        "data_source": {
            "train_file": str(scenes / "blocks.csv"),
            "class_labels": ["water", "vegetation", "building"],
            "windows": {"size": SIZE, "samples_per_epoch": 8, "max_nodata": 0.5},
        },
        "train_setup": {
            "model_name": "lightunet",
            "epochs": 2,
            "batch_size": 4,
            "lr": 0.01,
            "random_seed": 7,
            "deterministic": True,
        },
        "output_setup": {
            "output_folder": str(output),
            "name_exp_log": "job",
            "save_top_k": 1,
            "use_tensorboard": False,
            "get_prediction": False,
            "progress": 0,
        },
        "device_setup": {"accelerator": "cpu", "num_workers": 0, "precision": "32-true"},
        "cross_validation": {"threads": 1, **cross_validation},
    }


BLOCKS = {"spatial_blocks": {"size": 64}, "folds": 3, "test_groups": ["fold1"]}


def test_validate_prints_the_plan_of_a_cv_job_on_scenes(
    scenes: Path, capsys: pytest.CaptureFixture
) -> None:
    """Groups and tasks of scene rows, and their windows per task: by zone (each scene
    row whole) and by spatial blocks of grid windows; validate writes nothing."""
    from landseg.cli.main import main
    from tests.helpers import write_config

    zones = cv_scene_config(
        scenes, scenes / "runs", group_column="zone", test_groups=["south"], validation=0
    )
    zones["data_source"]["train_file"] = str(scenes / "zones.csv")
    blocks = cv_scene_config(scenes, scenes / "runs", **BLOCKS)
    # fold1 (11 windows) is tested; fold2 (11) and fold3 (10) validate in turn, less their
    # windows that overlap a test window (5 and 3)
    expected = {
        # south held out: b's 16 grid windows test; a and c train, one of them (16 windows)
        # validates (percentage_val); random training windows: 8 per epoch
        "zones": "cross-validation: 2 groups, 1 test subjects, 1 tasks, windows per task: "
        "train 8, val 16, test 16",
        "blocks": "cross-validation: 3 groups, 1 test subjects, 2 tasks, windows per task: "
        "train 8, val 6-7, test 11",
    }
    for name, config in (("zones", zones), ("blocks", blocks)):
        path = write_config(scenes / f"{name}.json", config)
        capsys.readouterr()
        assert main(["validate", "-c", str(path)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[1:3] == [
            f"  {expected[name]}",
            f"  job folder {scenes / 'runs' / 'job'}: starts",
        ], lines
    assert not (scenes / "runs").exists()


def job_results(job: Path) -> tuple[dict, dict[str, tuple[str, str, list[str]]]]:
    """The summary, and each task's history, test history and checkpoint names."""
    tasks = {}
    for run in sorted((job / "tasks").iterdir()):
        names = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
        texts = [(run / name).read_text() for name in ("history.json", "history_test.json")]
        tasks[run.name] = (texts[0], texts[1], names)
    return json.loads((job / "summary.json").read_text()), tasks


@pytest.mark.slow
def test_cv_on_scenes_killed_and_rerun_equals_an_uninterrupted_job(scenes: Path) -> None:
    """Spatial blocks of the scenes' grid windows, random training windows: the job SIGKILLed
    after its first task's first checkpoint and run again ends with the uninterrupted job's
    summary and every task's histories, to the bit."""
    from landseg.cli.main import main
    from tests.helpers import sigkill_when, write_config

    reference = write_config(scenes / "r.json", cv_scene_config(scenes, scenes / "r", **BLOCKS))
    assert main(["cv", "-c", str(reference)]) == 0
    expected = job_results(scenes / "r" / "job")
    assert list(expected[1]) == ["test-fold1__val-fold2", "test-fold1__val-fold3"]
    assert all(len(json.loads(history)) == 2 for history, _, _ in expected[1].values())

    killed = write_config(scenes / "k.json", cv_scene_config(scenes, scenes / "k", **BLOCKS))
    first = scenes / "k" / "job" / "tasks" / "test-fold1__val-fold2" / "checkpoints"
    moment = lambda: any(first.glob("*epoch=000.ckpt"))  # noqa: E731
    assert sigkill_when(["cv", "-c", str(killed)], moment, timeout=240) == -signal.SIGKILL
    assert not (scenes / "k" / "job" / "summary.json").exists()
    assert main(["cv", "-c", str(killed)]) == 0
    assert job_results(scenes / "k" / "job") == expected
    run = first.parent
    assert len(json.loads((run / "run.json").read_text())["resumed"]) == 1  # killed mid-task
    # the task tested its own grid windows only: the labelled pixels they own in the grid
    test = dataset(run / "test.csv")
    labelled = sum(int((test.reader.read(pair)[1] != IGNORE_INDEX).sum()) for pair in test.pairs)
    matrix = json.loads((run / "history_test.json").read_text())["2"]["cm_macro"]
    assert sum(map(sum, matrix)) == labelled == 6260
