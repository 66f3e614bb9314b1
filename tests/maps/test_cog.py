"""Predictions are Cloud-Optimised GeoTIFFs: layout, overviews, colours, QGIS styles, cleanup.

Probabilities are made up (columns alternating between two values) so that an overview tells
NEAREST from AVERAGE resampling: an average of class ids 0 and 3 would be 1 or 2, a class that
does not occur, and an average of 0.2 and 0.8 is 0.5, a value that does not occur.
"""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.env
import rasterio.errors
import rasterio.shutil
from pydantic import ValidationError

from landseg.config.choices import OUTPUT_TYPES
from landseg.config.schema import OutputSetup, output_class_problems
from landseg.core.errors import LandsegError
from landseg.inference.scene import LoadedModel, PredictOptions, Tiling, predict_scene
from landseg.inference.scene import write_prediction as write
from landseg.loggers.figures import class_palette
from landseg.maps import cog
from landseg.maps.cog import CogLayout, CogWriter, cog_writer
from landseg.maps.style import class_colors, default_colors, qml_text
from tests.helpers import (
    CRS,
    LABELS,
    TRANSFORM,
    demo_task,
    read,
    scene_pixels,
    write_scene,
)

HEIGHT, WIDTH = 600, 520  # larger than a 256 px tile: overviews 2x and 4x


@pytest.fixture(scope="module")
def task(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    return demo_task(demo_dir, tmp_path_factory.mktemp("task"))


@pytest.fixture(scope="module")
def model(task) -> LoadedModel:
    return LoadedModel.from_task(task)


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """An open raster with the grid of the predictions (its pixels are not read)."""
    path = write_scene(
        tmp_path_factory.mktemp("grid") / "grid.tif", np.zeros((1, HEIGHT, WIDTH), np.uint8)
    )
    with rasterio.open(path) as src:
        yield src


def made_up_probabilities() -> tuple[np.ndarray, np.ndarray]:
    """(4, H, W) probabilities: even columns class 0 (p 0.8), odd columns class 3 (p 0.8)."""
    odd = (np.arange(WIDTH) % 2 == 1)[None, :].repeat(HEIGHT, axis=0)
    probs = np.zeros((4, HEIGHT, WIDTH), np.float32)
    probs[0] = np.where(odd, 0.2, 0.8)
    probs[3] = np.where(odd, 0.8, 0.2)
    valid = np.ones((HEIGHT, WIDTH), bool)
    valid[:100, :100] = False  # whole overview pixels of nodata
    valid[300, 301] = False  # one nodata pixel among 4 of an overview pixel
    return probs, valid


def strips(rows: int = 100) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """The made-up probabilities a strip of ``rows`` rows at a time (not a tile's height)."""
    probs, valid = made_up_probabilities()
    for first in range(0, HEIGHT, rows):
        yield first, probs[:, first : first + rows], valid[first : first + rows]


def overview(path: Path, level: int = 0) -> np.ndarray:
    with rasterio.open(path, overview_level=level) as src:
        return src.read()


def with_colors(model: LoadedModel, colors: list[str] | None) -> LoadedModel:
    config = model.config.model_copy(deep=True)
    config.output_setup.class_colors = colors
    return dataclasses.replace(model, config=config)


# ---------------------------------------------------------------------------- layout


@pytest.mark.parametrize("output_type", OUTPUT_TYPES.names())
def test_every_output_type_is_a_cog(
    model: LoadedModel, grid, tmp_path: Path, output_type: str
) -> None:
    path = write(tmp_path / "p.tif", grid, model, output_type, strips())
    with rasterio.open(path) as out:
        structure = out.tags(ns="IMAGE_STRUCTURE")
        assert structure["LAYOUT"] == "COG" and structure["COMPRESSION"] == "DEFLATE"
        assert out.block_shapes[0] == (256, 256)
        assert out.overviews(1) == [2, 4]
        assert (out.crs, out.transform) == (rasterio.crs.CRS.from_string(CRS), TRANSFORM)
        assert (out.width, out.height) == (WIDTH, HEIGHT)
        expected = {"uint8": "2", "float32": "3"}.get(output_type)
        assert structure.get("PREDICTOR") == expected  # none for class ids and bits
        assert json.loads(out.tags()["landseg_class_labels"]) == LABELS
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == (["p.qml", "p.tif"] if output_type == "classes" else ["p.tif"])


def test_class_overviews_are_class_ids_never_averages(
    model: LoadedModel, grid, tmp_path: Path
) -> None:
    path = write(tmp_path / "p.tif", grid, model, "classes", strips())
    with rasterio.open(path) as out:
        assert out.nodata == 255 and out.dtypes == ("uint8",)
        full = out.read(1)
    probs, valid = made_up_probabilities()
    assert np.array_equal(full[valid], probs.argmax(0)[valid]) and (full[~valid] == 255).all()
    for level, factor in ((0, 2), (1, 4)):
        values = overview(path, level)[0]
        assert set(np.unique(values)) <= {0, 3, 255}  # an average of 0 and 3 would be 1 or 2
        assert (values[: 100 // factor, : 100 // factor] == 255).all()
        assert (values == 255).sum() == (100 // factor) ** 2


@pytest.mark.parametrize(("output_type", "scale"), [("uint8", 255), ("float32", 1)])
def test_probability_overviews_average_without_nodata(
    model: LoadedModel, grid, tmp_path: Path, output_type: str, scale: int
) -> None:
    path = write(tmp_path / "p.tif", grid, model, output_type, strips())
    with rasterio.open(path) as out:
        assert out.read(1)[0, 200] == pytest.approx(0.8 * scale, abs=0.5)
    half = overview(path, 0)[0].astype(np.float64)
    nodata = np.isnan(half) if output_type == "float32" else half == 255
    assert nodata[:50, :50].all() and nodata.sum() == 50 * 50  # nodata stays nodata
    # rows 300-301, columns 300-301 without the nodata pixel: (0.8 + 0.8 + 0.2) / 3, not 0.5
    assert abs(half[150, 150] - 0.6 * scale) <= 0.01 * scale
    others = ~nodata
    others[150, 150] = False
    assert np.abs(half[others] - 0.5 * scale).max() <= 0.01 * scale  # 0.2 and 0.8 averaged


def test_strips_of_any_height_give_the_same_raster(
    model: LoadedModel, grid, tmp_path: Path
) -> None:
    probs, valid = made_up_probabilities()
    a = write(tmp_path / "a.tif", grid, model, "uint8", strips(100))
    b = write(tmp_path / "b.tif", grid, model, "uint8", [(0, probs, valid)])
    c = write(tmp_path / "c.tif", grid, model, "uint8", strips(37))
    assert np.array_equal(read(a), read(b)) and np.array_equal(read(a), read(c))


def test_rows_are_written_a_whole_row_of_tiles_at_a_time() -> None:
    """Each tile is compressed once: writes start on a tile row and span whole tile rows."""

    class Recorder:
        width = 40

        def __init__(self) -> None:
            self.windows: list[tuple[int, int]] = []

        def write(self, data: np.ndarray, window) -> None:
            self.windows.append((int(window.row_off), int(window.height)))

    dataset = Recorder()
    writer = CogWriter(dataset, 16)
    for first in range(0, 70, 12):
        writer.write_rows(first, np.zeros((2, min(12, 70 - first), 40), np.uint8))
    writer.flush()
    assert dataset.windows == [(0, 16), (16, 16), (32, 16), (48, 16), (64, 6)]
    writer.write_rows(100, np.zeros((1, 5, 40)))  # not the next row: written as it is
    assert dataset.windows[-1] == (100, 5)


def test_gdal_cache_is_bounded_while_writing(tmp_path: Path) -> None:
    profile = {"width": 32, "height": 32, "count": 1, "dtype": "uint8", "nodata": 255}
    profile.update(crs=CRS, transform=TRANSFORM)
    with cog_writer(tmp_path / "x.tif", profile, CogLayout(block=16), cache_mb=64) as out:
        assert rasterio.env.getenv()["GDAL_CACHEMAX"] == 64
        out.write_rows(0, np.ones((1, 32, 32), np.uint8))
    with rasterio.open(tmp_path / "x.tif") as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and src.overviews(1) == [2]
        assert (src.read() == 1).all()


# ---------------------------------------------------------------------------- colours, styles


def palette_table(colors: list[str]) -> dict[int, tuple[int, int, int, int]]:
    return {i: (*(int(c[k : k + 2], 16) for k in (1, 3, 5)), 255) for i, c in enumerate(colors)}


@pytest.mark.parametrize("colors", [None, ["#FF0000", "#00ff00", "#0000ff", "#123456"]])
def test_class_rasters_carry_colours_names_and_a_qgis_style(
    model: LoadedModel, grid, tmp_path: Path, colors: list[str] | None
) -> None:
    model = with_colors(model, colors)
    expected = [c.lower() for c in colors] if colors else default_colors(4)
    if colors is None:
        assert expected == [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in class_palette(4)]
    path = write(tmp_path / "scene.tif", grid, model, "classes", strips())
    with rasterio.open(path) as out:
        table = out.colormap(1)
        assert {i: table[i] for i in range(4)} == palette_table(expected)
        assert table[255] == (0, 0, 0, 0)
        assert out.descriptions[0] == "class: 0 water, 1 vegetation, 2 bare soil, 3 building"
        assert out.tags(1) == {f"class_{i}": label for i, label in enumerate(LABELS)}

    style = tmp_path / "scene.qml"
    root = ET.parse(style).getroot()
    assert root.tag == "qgis"
    renderer = root.find("pipe/rasterrenderer")
    assert renderer is not None
    assert (renderer.get("type"), renderer.get("band")) == ("paletted", "1")
    entries = [e.attrib for e in renderer.findall("colorPalette/paletteEntry")]
    assert entries == [
        {"value": str(i), "color": expected[i], "label": LABELS[i], "alpha": "255"}
        for i in range(4)
    ]


def test_labels_are_escaped_in_the_style() -> None:
    labels = ['roads & "paths"', "<water>"]
    root = ET.fromstring(qml_text(labels, ["#000000", "#ffffff"]).split("\n", 1)[1])
    assert [e.get("label") for e in root.iter("paletteEntry")] == labels


def test_a_probability_raster_replaces_a_stale_class_style(
    model: LoadedModel, grid, tmp_path: Path
) -> None:
    write(tmp_path / "p.tif", grid, model, "classes", strips())
    assert (tmp_path / "p.qml").is_file()
    write(tmp_path / "p.tif", grid, model, "float32", strips())
    assert not (tmp_path / "p.qml").exists()  # QGIS would paint probabilities as classes
    (tmp_path / "p.qml").write_text("<qgis/>")  # not landseg's: left alone
    write(tmp_path / "p.tif", grid, model, "uint8", strips())
    assert (tmp_path / "p.qml").read_text() == "<qgis/>"


def test_class_colors_are_checked() -> None:
    base = {"output_folder": "runs"}
    with pytest.raises(ValidationError, match="#RRGGBB"):
        OutputSetup(**base, class_colors=["#12345", "red"])
    out = OutputSetup(**base, class_colors=["#112233", "#445566"])
    assert output_class_problems(out, 2) == [] and output_class_problems(out, None) == []
    (line,) = output_class_problems(out, 3)
    assert line.startswith("output_setup.class_colors: 2 colour(s) for 3 classes")
    many = OutputSetup(**base, prediction_output_type="classes")
    assert output_class_problems(many, 255) == []
    assert "do not fit" in output_class_problems(many, 256)[0]
    with pytest.raises(LandsegError, match="2 colour"):
        class_colors(3, ["#112233", "#445566"])


def test_predict_refuses_colours_that_do_not_fit_before_predicting(
    model: LoadedModel, tmp_path: Path
) -> None:
    from landseg.inference.scene import predict_files

    scene = write_scene(tmp_path / "in" / "small.tif", scene_pixels(48, 64))
    three = with_colors(model, ["#112233", "#445566", "#778899"])
    with pytest.raises(LandsegError, match="3 colour"):
        predict_files(three, [scene], tmp_path / "out", PredictOptions(Tiling(64, 16)), False)
    assert not (tmp_path / "out").exists()
    uint8 = PredictOptions(Tiling(64, 16), "uint8")  # colours are for class rasters only
    (path,) = predict_files(three, [scene], tmp_path / "out", uint8, False)
    assert sorted(p.name for p in path.parent.iterdir()) == ["small.tif"]


# ---------------------------------------------------------------------------- cleanup


def test_no_temporary_file_is_left_by_an_error_mid_write(
    model: LoadedModel, grid, tmp_path: Path
) -> None:
    previous = write(tmp_path / "p.tif", grid, model, "uint8", strips())
    before = previous.read_bytes()

    def failing() -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        for i, strip in enumerate(strips()):
            if i == 3:
                raise RuntimeError("the model failed mid-scene")
            yield strip

    with pytest.raises(RuntimeError, match="mid-scene"):
        write(tmp_path / "p.tif", grid, model, "classes", failing())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.tif"]
    assert previous.read_bytes() == before  # the old prediction is untouched


def test_no_temporary_file_is_left_by_an_error_in_the_cog_copy(
    model: LoadedModel, grid, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_copy = rasterio.shutil.copy
    copied: list[Path] = []

    def copy_then_fail(src, dst, **options):
        real_copy(src, dst, **options)  # a complete COG under its temporary name
        (Path(f"{dst}.ovr.tmp")).write_bytes(b"GDAL's overviews")
        copied.append(Path(dst))
        raise rasterio.errors.RasterioIOError("disk full")

    monkeypatch.setattr(cog.rasterio.shutil, "copy", copy_then_fail)
    with pytest.raises(rasterio.errors.RasterioIOError, match="disk full"):
        write(tmp_path / "p.tif", grid, model, "classes", strips())
    assert copied and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- end to end


def test_predict_and_split_write_cogs(model: LoadedModel, task, tmp_path: Path) -> None:
    """A real scene, through ``landseg predict``'s and training's code paths."""
    from types import SimpleNamespace

    from landseg.data.csvfiles import SamplePair
    from landseg.data.dataset import SegmentationDataset
    from landseg.inference.split import predict_split

    pixels = scene_pixels(300, 280)
    pixels[:, :40, :40] = 255
    scene = write_scene(tmp_path / "in" / "scene.tif", pixels)
    options = PredictOptions(Tiling(64, 16, batch_size=8), "classes")
    predicted = predict_scene(model, scene, tmp_path / "out" / "scene.tif", options)
    mask = write_scene(tmp_path / "msk" / "scene.tif", np.zeros((1, 300, 280), np.uint8))
    dataset = SegmentationDataset(
        [SamplePair(scene, mask, 1)],
        image_bands=None,
        mask_bands=None,
        n_classes=4,
        pixel_range=255,
    )
    datamodule = SimpleNamespace(test_dataset=dataset)
    (split,) = predict_split(task, datamodule, "test", tmp_path / "split", "classes")
    for path in (predicted, split):
        with rasterio.open(path) as out:
            assert out.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and out.overviews(1) == [2]
            assert (out.crs, out.transform, out.nodata) == (
                rasterio.crs.CRS.from_string(CRS),
                TRANSFORM,
                255,
            )
            assert (out.read(1)[:40, :40] == 255).all() and (out.read(1)[40:] < 4).all()
        assert path.with_suffix(".qml").is_file()
        assert sorted(p.name for p in path.parent.iterdir()) == ["scene.qml", "scene.tif"]
