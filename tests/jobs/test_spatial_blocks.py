"""Spatial blocks: groups from the tiles' georeferencing, folds, and the buffer round test tiles.

Most tests use a generated 6 x 4 grid of 32 x 32-pixel tiles at 1 m (32 m tiles) whose grid is
aligned with 64 m blocks, so every block holds 2 x 2 tiles; one test cuts the real
Massachusetts scenes into tiles; one runs a short job on the demo data.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from rasterio.transform import Affine

from landseg.cli.main import main
from landseg.config.cross_validation import CrossValidation
from landseg.config.load import validate_config
from landseg.core.errors import ConfigError, DataError
from landseg.core.files import write_geotiff
from landseg.data.csvfiles import read_pairs
from landseg.jobs import spatial
from landseg.jobs.plan import (
    Job,
    Row,
    build_plan,
    group_rows,
    prepare_job,
    task_csvs,
    task_rows,
    write_task_files,
)
from tests.helpers import write_config

CRS = "EPSG:32631"
WEST, NORTH = 512_000.0, 4_000_000.0  # multiples of 64: the 64 m blocks hold 2 x 2 tiles
TILE = 32.0  # metres (32 pixels at 1 m)
COLS, ROWS = 6, 4


def tile_bounds(col: int, row: int) -> tuple[float, float, float, float]:
    left, top = WEST + col * TILE, NORTH - row * TILE
    return left, top - TILE, left + TILE, top


def write_tile(path: Path, bounds: tuple[float, float, float, float] | None, crs=CRS) -> None:
    """A 32 x 32 one-band tile; ``bounds`` None: no transform; ``crs`` None: no CRS."""
    transform = Affine(1.0, 0.0, bounds[0], 0.0, -1.0, bounds[3]) if bounds else None
    write_geotiff(path, np.zeros((32, 32), np.uint8), crs=crs, transform=transform)


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    """The 6 x 4 grid of georeferenced tiles and its CSV (image,mask; row-major order)."""
    lines = ["image,mask"]
    for row in range(ROWS):
        for col in range(COLS):
            name = f"t_{col}_{row}.tif"
            write_tile(tmp_path / "img" / name, tile_bounds(col, row))
            lines.append(f"img/{name},img/{name}")
    (tmp_path / "tiles.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "tiles.csv"


def grid_rows(csv_file: Path, **cv: object) -> tuple[list[Row], CrossValidation]:
    settings = CrossValidation(**cv)  # type: ignore[arg-type]
    return group_rows(read_pairs(csv_file), settings, csv_file), settings


def position(path: Path | str) -> tuple[int, int]:
    _, col, row = Path(path).stem.split("_")
    return int(col), int(row)


def distance(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Between two rectangles (left, bottom, right, top); written apart from the code's."""
    dx = max(0.0, b[0] - a[2], a[0] - b[2])
    dy = max(0.0, b[1] - a[3], a[1] - b[3])
    return math.sqrt(dx * dx + dy * dy)


def csv_images(text: str) -> list[str]:
    return [line.split(",")[0] for line in text.splitlines()]


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("section", "key", "message"),
    [
        (
            {"group_column": "zone", "spatial_blocks": {"size": 10}},
            "cross_validation",
            "set exactly one of group_column",
        ),
        ({"spatial_blocks": {}}, "cross_validation.spatial_blocks", "exactly one of size"),
        (
            {"spatial_blocks": {"size": 10, "number": 4}},
            "cross_validation.spatial_blocks",
            "exactly one of size",
        ),
        ({"spatial_blocks": {"size": 0}}, "cross_validation.spatial_blocks.size", "than 0"),
        ({"spatial_blocks": {"size": "inf"}}, "cross_validation.spatial_blocks.size", "finite"),
        ({"spatial_blocks": {"number": 1}}, "cross_validation.spatial_blocks.number", "2"),
        (
            {"spatial_blocks": {"size": 10, "buffer": -1}},
            "cross_validation.spatial_blocks.buffer",
            "greater than or equal to 0",
        ),
        (
            {"spatial_blocks": {"size": 10, "bufer": 1}},
            "cross_validation.spatial_blocks.bufer",
            "did you mean 'buffer'",
        ),
        ({"spatial_blocks": {"size": 10}, "folds": 1}, "cross_validation.folds", "equal to 2"),
    ],
)
def test_section_rules_name_the_key(make_cv_config, section: dict, key: str, message: str) -> None:
    config = make_cv_config()
    config["cross_validation"] = section
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    assert len(info.value.problems) == 1
    line = info.value.problems[0]
    assert line.startswith(f"{key}: ") and message in line


def test_a_valid_section() -> None:
    cv = CrossValidation(spatial_blocks={"number": 6}, folds=3)  # type: ignore[arg-type]
    assert cv.spatial_blocks is not None
    assert (cv.spatial_blocks.size, cv.spatial_blocks.number, cv.spatial_blocks.buffer) == (
        None,
        6,
        0.0,
    )


# ---------------------------------------------------------------------------- blocks and folds


def test_each_tile_is_in_the_block_that_holds_its_centre(grid: Path) -> None:
    rows, _ = grid_rows(grid, spatial_blocks={"size": 64})
    for row in rows:
        col, line = position(row.image)
        left, bottom, right, top = tile_bounds(col, line)
        x, y = (left + right) / 2, (bottom + top) / 2
        expected = f"block-{math.floor(x / 64)}-{math.floor(y / 64)}"
        assert row.group == expected and row.bounds == (left, bottom, right, top)
    by_block: dict[str, list[tuple[int, int]]] = {}
    for row in rows:
        by_block.setdefault(row.group, []).append(position(row.image))
    assert sorted(by_block) == [
        "block-8000-62498",
        "block-8000-62499",
        "block-8001-62498",
        "block-8001-62499",
        "block-8002-62498",
        "block-8002-62499",
    ]
    # 2 x 2 contiguous tiles each; rows grow northwards like y
    assert sorted(by_block["block-8000-62499"]) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert sorted(by_block["block-8002-62498"]) == [(4, 2), (4, 3), (5, 2), (5, 3)]
    # a block's name does not depend on the other tiles
    alone, _ = grid_rows_from(grid, [(5, 3)], spatial_blocks={"size": 64})
    assert [r.group for r in alone] == ["block-8002-62498"]


def grid_rows_from(
    csv_file: Path, keep: list[tuple[int, int]], **cv: object
) -> tuple[list[Row], CrossValidation]:
    pairs = [p for p in read_pairs(csv_file) if position(p.image) in keep]
    settings = CrossValidation(**cv)  # type: ignore[arg-type]
    return group_rows(pairs, settings, csv_file), settings


def test_number_of_blocks_sets_the_size(grid: Path) -> None:
    # centres span 5 x 32 = 160 m by 3 x 32 = 96 m: size = max(sqrt(160 * 96 / 6), 160 / 6)
    footprints = [tile_bounds(c, r) for r in range(ROWS) for c in range(COLS)]
    names, size = spatial.assign_blocks(
        footprints, CrossValidation(spatial_blocks={"number": 6}).spatial_blocks
    )
    assert size == pytest.approx(math.sqrt(160 * 96 / 6))
    rows, _ = grid_rows(grid, spatial_blocks={"number": 6})
    assert [r.group for r in rows] == names
    # one row of tiles: the long side decides
    line = [tile_bounds(c, 0) for c in range(COLS)]
    _, size = spatial.assign_blocks(
        line, CrossValidation(spatial_blocks={"number": 2}).spatial_blocks
    )
    assert size == pytest.approx(80.0)


def test_folds_are_balanced_by_tile_count_and_deterministic(grid: Path) -> None:
    order = str
    assert spatial.join_folds({"a": 5, "b": 3, "c": 3, "d": 1}, 2, order) == {
        "a": "fold1",
        "b": "fold2",
        "c": "fold2",
        "d": "fold1",
    }
    with pytest.raises(ConfigError, match=r"cross_validation.folds: 5 folds need at least 5"):
        spatial.join_folds({"a": 1, "b": 1}, 5, order)
    rows, cv = grid_rows(grid, spatial_blocks={"size": 64}, folds=3)
    plan, used = build_plan(rows, cv, 0.3)
    assert plan.groups == ("fold1", "fold2", "fold3")
    folds = {row.block: row.group for row in used}
    assert folds == {
        "block-8000-62498": "fold1",
        "block-8000-62499": "fold2",
        "block-8001-62498": "fold3",
        "block-8001-62499": "fold1",
        "block-8002-62498": "fold2",
        "block-8002-62499": "fold3",
    }
    assert [sum(r.group == f for r in used) for f in plan.groups] == [8, 8, 8]
    # the same from the rows in another order
    _, again = build_plan(list(reversed(rows)), cv, 0.3)
    assert {row.block: row.group for row in again} == folds
    assert [t.id for t in plan.tasks][:2] == ["test-fold1__val-fold2", "test-fold1__val-fold3"]


def test_folds_join_zones_too() -> None:
    rows = [Row(Path(f"/{z}_{i}.tif"), Path(f"/m{z}_{i}.tif"), z) for z, n in
            {"z1": 4, "z2": 3, "z3": 2, "z4": 1}.items() for i in range(n)]  # fmt: skip
    plan, used = build_plan(rows, CrossValidation(group_column="zone", folds=2), 0.3)
    assert {(r.origin, r.group) for r in used} == {
        ("z1", "fold1"),
        ("z2", "fold2"),
        ("z3", "fold2"),
        ("z4", "fold1"),
    }
    assert [t.id for t in plan.tasks] == ["test-fold1__val-split", "test-fold2__val-split"]


# ---------------------------------------------------------------------------- the buffer


def test_distances_are_between_footprints() -> None:
    test = np.array([[0.0, 0.0, 32.0, 32.0]])
    candidates = np.array(
        [
            [32.0, 32.0, 64.0, 64.0],  # touches a corner: 0
            [64.0, 0.0, 96.0, 32.0],  # one tile apart: 32
            [64.0, 64.0, 96.0, 96.0],  # diagonally one tile apart: 45.25
            [10.0, 10.0, 20.0, 20.0],  # inside: 0
        ]
    )
    assert spatial.rectangle_distances(candidates, test)[:, 0].tolist() == pytest.approx(
        [0.0, 32.0, math.hypot(32, 32), 0.0]
    )
    near = spatial.near_tiles
    assert near(candidates, test, ["t"], 40.0).tolist() == [True, True, False, True]
    assert near(candidates, test, ["t"], 32.0).tolist() == [True, False, False, True]  # strict
    assert near(candidates, test, ["t"], 0.0).tolist() == [False] * 4


@pytest.mark.parametrize(
    ("buffer", "settings"),
    [
        (10.0, {"folds": 3}),  # 3 folds, validation rotations: touching tiles left out
        (33.0, {"validation": 0}),  # 6 blocks: one tile apart left out, diagonally kept
    ],
)
def test_buffer_leaves_out_every_tile_near_a_test_tile_and_only_those(
    grid: Path, buffer: float, settings: dict
) -> None:
    rows, cv = grid_rows(grid, spatial_blocks={"size": 64, "buffer": buffer}, **settings)
    plan, used = build_plan(rows, cv, 0.3)
    assert len(plan.tasks) == 6
    bounds = {str(row.image): tile_bounds(*position(row.image)) for row in used}
    group = {str(row.image): row.group for row in used}
    total_left_out = 0
    for task in plan.tasks:
        csvs = task_csvs(task, used)
        test = csv_images(csvs["test"])
        assert sorted(test) == sorted(i for i, g in group.items() if g in task.test)
        for split, groups in (("train", task.train), ("val", task.val)):
            if not groups:  # validated on a share of the training rows
                continue
            kept = csv_images(csvs[split])
            for image, g in group.items():
                if g not in groups:
                    continue
                gap = min(distance(bounds[image], bounds[t]) for t in test)
                assert (image in kept) == (gap >= buffer), (task.id, split, image, gap)
                total_left_out += image not in kept
    assert total_left_out > 0


def test_no_buffer_keeps_every_tile(grid: Path) -> None:
    rows, cv = grid_rows(grid, spatial_blocks={"size": 64}, folds=3)
    plan, used = build_plan(rows, cv, 0.3)
    for task in plan.tasks:
        sizes = {split: len(r) for split, r in task_rows(task, used).items()}
        assert sizes == {"train": 8, "val": 8, "test": 8}


def test_a_buffer_that_leaves_no_training_tile_is_refused(grid: Path) -> None:
    rows, cv = grid_rows(grid, spatial_blocks={"size": 64, "buffer": 1000}, folds=3)
    with pytest.raises(ConfigError, match=r"cross_validation.spatial_blocks.buffer: 1000 leaves"):
        build_plan(rows, cv, 0.3)


# ---------------------------------------------------------------------------- georeferencing


def test_a_tile_without_crs_is_named(grid: Path, tmp_path: Path, make_cv_config, capsys) -> None:
    lines = grid.read_text().splitlines()
    for name in ("a.tif", "b.tif"):
        write_tile(tmp_path / "img" / name, tile_bounds(7, 0), crs=None)  # a transform only
    lines[3:3] = ["img/a.tif,img/a.tif"]  # row 4
    lines.append("img/b.tif,img/b.tif")
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        grid_rows(bad, spatial_blocks={"size": 64})
    assert info.value.problems == [
        f"{bad}, row 4: image {tmp_path / 'img' / 'a.tif'} has no CRS; "
        "cross_validation.spatial_blocks needs georeferenced tiles"
    ]
    config = make_cv_config(spatial_blocks={"size": 64})
    del config["cross_validation"]["group_column"]
    config["cross_validation"]["test_groups"] = None
    config["data_source"]["train_file"] = str(bad)
    path = write_config(tmp_path / "cv.json", config)
    for command in (["validate", "-c", str(path), "--no-device-check"], ["cv", "-c", str(path)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.splitlines() == [f"error: {info.value.problems[0]}"]
    assert not (tmp_path / "runs").exists()


def test_tiles_in_another_crs_are_named(grid: Path, tmp_path: Path) -> None:
    write_tile(tmp_path / "img" / "other.tif", tile_bounds(7, 0), crs="EPSG:32632")
    bad = tmp_path / "other.csv"
    bad.write_text(grid.read_text() + "img/other.tif,img/other.tif\n")
    with pytest.raises(DataError, match=r"row 26: image .*other.tif is in EPSG:32632, but "):
        grid_rows(bad, spatial_blocks={"size": 64})


# ---------------------------------------------------------------------------- the job


def spatial_config(make_cv_config, **cross_validation: object) -> dict:
    """The demo job with groups from spatial blocks (40 m blocks of the 16 m demo tiles)."""
    config = make_cv_config()
    config["cross_validation"] = {"spatial_blocks": {"size": 40, "buffer": 1}, "folds": 3}
    config["cross_validation"].update(cross_validation)
    config["train_setup"].update(epochs=1, batch_size=4)
    return config


def test_the_job_folder_has_the_assignment_and_its_map(make_cv_config, tmp_path: Path) -> None:
    config = spatial_config(make_cv_config)
    path = write_config(tmp_path / "cv.json", config)
    assert main(["validate", "-c", str(path), "--no-device-check"]) == 0
    assert not (tmp_path / "runs").exists()  # validate writes nothing

    job, used = prepare_job(path, [], device_check=False)
    write_task_files(job, used)  # as the job's start does
    with open(job.folder / "rows.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == ["image", "mask", "group", "block", "x", "y"]
    assert len(table) == 24
    # the demo grid: 5 columns of 16 m tiles from (640000, 6860000); 40 m blocks
    first = table[0]
    assert first["image"].endswith("img/tile_00_00.tif")
    assert (first["group"], first["block"], first["x"], first["y"]) == (
        "fold2",
        "block-16000-171499",
        "640008",
        "6859992",
    )
    blocks = {r["block"]: sum(t["block"] == r["block"] for t in table) for r in table}
    assert blocks == {
        "block-16000-171499": 6,
        "block-16001-171499": 9,
        "block-16000-171498": 4,
        "block-16001-171498": 5,
    }
    assert {r["block"]: r["group"] for r in table} == {
        "block-16001-171499": "fold1",
        "block-16000-171499": "fold2",
        "block-16001-171498": "fold3",
        "block-16000-171498": "fold3",
    }
    assert read_pairs(job.folder / "rows.csv")[0].extra["group"] == "fold2"  # still a job CSV
    png = job.folder / spatial.MAP_FILE
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the buffer's exclusions are recorded, and a worker's Job.load reads them back
    assert job.excluded["test-fold1__val-fold2"] == 7
    assert job.split_sizes["test-fold1__val-fold2"] == {"train": 5, "val": 3, "test": 9}
    job.save()
    again = Job.load(job.folder)
    assert again.plan == job.plan and again.hashes == job.hashes
    assert again.excluded == job.excluded and again.split_sizes == job.split_sizes
    saved = json.loads((job.folder / "job.json").read_text())["tasks"][0]
    assert (saved["buffer"], saved["excluded"]) == (1.0, 7)


@pytest.mark.slow
def test_a_spatial_job_runs_end_to_end(make_cv_config, tmp_path: Path) -> None:
    config = spatial_config(make_cv_config, test_groups=["fold1"], validation=1)
    path = write_config(tmp_path / "cv.json", config)
    assert main(["cv", "-c", str(path)]) == 0
    job = tmp_path / "runs" / "job"
    summary = json.loads((job / "summary.json").read_text())
    assert summary["complete"] and list(summary["tasks"]) == ["test-fold1__val-fold2"]
    task = job / "tasks" / "test-fold1__val-fold2"
    sizes = {s: len((task / f"{s}.csv").read_text().splitlines()) for s in ("train", "val", "test")}
    assert sizes == {"train": 5, "val": 3, "test": 9}
    assert (job / spatial.MAP_FILE).is_file()


# ---------------------------------------------------------------------------- real data


def cut_scene(scene: Path, folder: Path, size: int = 256) -> list[str]:
    """The scene and its buildings mask cut into size x size GeoTIFF windows; CSV lines."""
    import rasterio
    from rasterio.windows import Window

    lines = []
    mask_path = scene.with_name(f"{scene.stem}_buildings.tif")
    with rasterio.open(scene) as src, rasterio.open(mask_path) as msk:
        for top in range(0, src.height - size + 1, size):
            for left in range(0, src.width - size + 1, size):
                window = Window(left, top, size, size)
                name = f"{scene.stem}_{left}_{top}.tif"
                transform = src.window_transform(window)
                for kind, dataset in (("img", src), ("msk", msk)):
                    write_geotiff(
                        folder / kind / name,
                        dataset.read(window=window),
                        crs=dataset.crs,
                        transform=transform,
                    )
                lines.append(f"img/{name},msk/{name}")
    return lines


@pytest.mark.realdata
def test_massachusetts_tiles_keep_the_buffer(shared_data: Path, tmp_path: Path) -> None:
    scenes = shared_data / "massachusetts-buildings"
    if not scenes.is_dir():
        pytest.skip("massachusetts-buildings is absent")
    lines = ["image,mask"]
    for name in ("22978945_15.tif", "23429155_15.tif"):
        lines += cut_scene(scenes / name, tmp_path)
    (tmp_path / "tiles.csv").write_text("\n".join(lines) + "\n")
    buffer = 100.0
    rows, cv = grid_rows(
        tmp_path / "tiles.csv", spatial_blocks={"size": 500, "buffer": buffer}, folds=3
    )
    assert len(rows) == 20  # 4 x 3 + 4 x 2 windows of 256 m
    plan, used = build_plan(rows, cv, 0.3)
    assert len(plan.tasks) == 6
    footprint = {str(row.image): _read_bounds(row.image) for row in used}
    assert all(row.bounds == pytest.approx(footprint[str(row.image)]) for row in used)
    left_out = 0
    for task in plan.tasks:
        csvs = task_csvs(task, used)
        test = csv_images(csvs["test"])
        for split in ("train", "val"):
            kept = csv_images(csvs[split])
            assert kept, (task.id, split)
            for image in kept:
                gap = min(distance(footprint[image], footprint[t]) for t in test)
                assert gap >= buffer, (task.id, split, image, gap)
            groups = task.train if split == "train" else task.val
            candidates = [str(r.image) for r in used if r.group in groups]
            left_out += len(candidates) - len(kept)
            for image in set(candidates) - set(kept):
                assert min(distance(footprint[image], footprint[t]) for t in test) < buffer
    assert left_out > 0


def _read_bounds(path: Path) -> tuple[float, float, float, float]:
    import rasterio

    with rasterio.open(path) as src:
        return tuple(src.bounds)  # type: ignore[return-value]
