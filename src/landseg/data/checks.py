"""Data checks run before any training: every problem at once, each line naming its culprit.

:func:`check_data` reads the CSV files and the raster *headers* (no pixels), and checks them
against each other and against the config: files exist and open, image and mask sizes match,
band selections exist, all patches share one size, all images one band count, the pixel range
of every image dtype is known (several dtypes need a value per dtype), and the lengths of
``normalization_weights``, ``class_labels`` and ``class_imbalance`` match the bands and
classes. It returns the :class:`DataSummary` that the
datamodule and the model factory are built from.

Number of classes: ``len(mask_bands)`` (default: all bands) for one-hot masks. For
single-band class-index masks the header does not tell, so it is ``len(class_labels)`` when
given; otherwise the mask pixels are read (max class value + 1) but only when there are at
most :data:`MAX_MASKS_READ` masks, and beyond that ``data_source.class_labels`` is required —
a check must stay fast on a large dataset, and a class count guessed from a sample of masks
could silently be wrong.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import rasterio

from landseg.config.schema import LandsegConfig
from landseg.core.errors import DataError
from landseg.data.csvfiles import SamplePair, load_splits, testing_subset
from landseg.data.normalization import dtype_ranges
from landseg.data.raster import (
    RasterHeader,
    check_bands,
    check_mask_bands,
    index_mask_max,
    mask_kind,
    read_header,
    registration_problem,
)
from landseg.data.scene_checks import SceneFacts, scene_row_problems
from landseg.data.scenes import grid_offsets
from landseg.data.summary import DataSummary, MaskKind

log = logging.getLogger("landseg.data")

#: Index masks whose pixels may be read to count classes when class_labels is absent.
MAX_MASKS_READ = 200
#: Index masks read, spread over the rows, to see whether they hold classes beyond the labels.
LABEL_SAMPLE_MASKS = 16
#: Lines reported per kind of problem; the rest are counted in one more line.
MAX_LINES_PER_KIND = 10


class _Problems:
    """Problem lines, capped per kind so a dataset-wide mistake stays readable."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.counts: Counter[str] = Counter()

    def add(self, kind: str, line: str) -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= MAX_LINES_PER_KIND:
            self.lines.append(line)

    def all_lines(self) -> list[str]:
        extra = [
            f"... and {count - MAX_LINES_PER_KIND} more problems of this kind ({kind})"
            for kind, count in self.counts.items()
            if count > MAX_LINES_PER_KIND
        ]
        return self.lines + extra


class _Examples:
    """The first pair seen for each distinct value, to name one culprit per value."""

    def __init__(self) -> None:
        self.seen: dict[Hashable, str] = {}

    def add(self, value: Hashable, example: str) -> None:
        self.seen.setdefault(value, example)

    def single(self) -> Hashable | None:
        return next(iter(self.seen)) if len(self.seen) == 1 else None

    def listing(self) -> str:
        return ", ".join(f"{value} (e.g. {example})" for value, example in self.seen.items())


def check_data(config: LandsegConfig) -> DataSummary:
    """Check the data named by ``config``; raise one DataError listing every problem."""
    source, setup = config.data_source, config.train_setup
    problems = _Problems()
    csv_lines: list[str] = []
    splits = load_splits(
        source.train_file,
        source.val_file,
        source.test_file,
        percentage_val=source.percentage_val,
        seed=setup.random_seed,
        problems=csv_lines,
    )
    for line in csv_lines:
        problems.add("csv", line)
    if source.val_file is None:
        _check_val_split(splits, config, problems)

    scan = _scan_rasters(splits, config, problems)
    for label_kind, example in scan.scenes.label_kinds.items():
        scan.mask_kinds.add(label_kind, example)
    for count, example in scan.scenes.onehot_bands.items():
        scan.onehot_bands.add(count, example)
    _require_one(scan.sizes, "patch sizes (height, width) differ in train and val", problems)
    _require_one(scan.test_sizes, "patch sizes (height, width) differ in the test split", problems)
    _require_one(scan.image_bands, "images have different band counts", problems)
    _require_one(
        scan.mask_kinds, "masks mix single-band class-index and multi-band one-hot masks", problems
    )
    if source.mask_bands is None:
        _require_one(
            scan.onehot_bands,
            "one-hot masks have different band counts; select classes with data_source.mask_bands",
            problems,
        )

    n_image_bands = len(source.image_bands) if source.image_bands else scan.image_bands.single()
    dtypes = {str(dtype): example for dtype, example in scan.image_dtypes.seen.items()}
    dtype = "mixed" if len(dtypes) > 1 else next(iter(dtypes), None)
    pixel_range: float | dict[str, float] | None = None
    if dtypes:  # several dtypes: each needs its known scaling (data.normalization)
        try:
            pixel_range = dtype_ranges(dtypes, source.pixel_range)
        except DataError as err:
            for line in err.problems:
                problems.add("pixel_range", line)
    if n_image_bands is not None:
        _check_weights(config, int(cast("int", n_image_bands)), problems)

    kind = cast("MaskKind | None", scan.mask_kinds.single())
    if source.windows is not None:
        n_classes, basis, pixels_read = _count_scene_classes(config, kind, scan, problems)
    else:
        n_classes, basis, pixels_read = _count_classes(
            config, kind, scan.onehot_bands, scan.headers, problems
        )
    # with mask_bands the count is the config's own (DataSource.problems checks the labels)
    if n_classes is not None and not (kind == "onehot" and source.mask_bands):
        _check_class_lengths(config, n_classes, basis, problems)

    rows = sum(len(pairs) for pairs in splits.values())
    if problems.counts or rows == 0:
        raise DataError(problems.all_lines() or ["no image,mask rows in the CSV files"])
    assert n_image_bands is not None and pixel_range is not None and n_classes is not None
    assert kind is not None and dtype is not None

    n_csv = sum(path is not None for path in (source.train_file, source.val_file, source.test_file))
    read_note = (
        f"pixels of {pixels_read} index masks read to count classes"
        if pixels_read
        else "no pixels read"
    )
    used = testing_subset(splits) if setup.testing else splits
    split_sizes = {name: len(pairs) for name, pairs in used.items()}
    patch_size = cast("tuple[int, int]", scan.sizes.single())
    if source.windows is not None:  # windows per epoch: random ones to train, the grid else
        split_sizes = {
            name: (name == "train" and source.windows.samples_per_epoch)
            or _grid_windows(pairs, scan.headers, source.windows.size, source.windows.step)
            for name, pairs in used.items()
        }
        patch_size = (source.windows.size, source.windows.size)
    return DataSummary(
        n_image_bands=int(cast("int", n_image_bands)),
        n_classes=n_classes,
        class_labels=tuple(source.class_labels or (f"class {i}" for i in range(1, n_classes + 1))),
        mask_kind=kind,
        patch_size=patch_size,
        image_dtype=str(dtype),
        pixel_range=pixel_range,
        split_sizes=split_sizes,
        report=f"checked {rows} {'scene ' if source.windows else ''}rows in {n_csv} CSV "
        f"file{'' if n_csv == 1 else 's'}: headers of "
        f"{sum(h is not None for h in scan.headers.values())} rasters ({read_note})"
        + _windows_note(config),
    )


def _windows_note(config: LandsegConfig) -> str:
    """How scene rows are read, for the summary line (empty for tiles)."""
    windows = config.data_source.windows
    if windows is None:
        return ""
    train = (
        f"{windows.samples_per_epoch} random windows per epoch"
        if windows.samples_per_epoch
        else "the grid"
    )
    return (
        f"; windows of {windows.size} px: train reads {train}, val and test a grid of "
        f"stride {windows.step}"
    )


@dataclass
class _Scan:
    """What the raster headers of every row say, one example row per distinct value."""

    headers: dict[Path, RasterHeader | None] = field(default_factory=dict)
    sizes: _Examples = field(default_factory=_Examples)  # train and val: batched together
    test_sizes: _Examples = field(default_factory=_Examples)  # test: its own size (scenes)
    image_bands: _Examples = field(default_factory=_Examples)
    image_dtypes: _Examples = field(default_factory=_Examples)
    mask_kinds: _Examples = field(default_factory=_Examples)
    onehot_bands: _Examples = field(default_factory=_Examples)
    scenes: SceneFacts = field(default_factory=SceneFacts)  # scene rows (data_source.windows)


def _scan_rasters(
    splits: dict[str, list[SamplePair]], config: LandsegConfig, problems: _Problems
) -> _Scan:
    """Read every header once; report missing, unreadable and per-pair problems."""
    source = config.data_source
    scan = _Scan()
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):  # no folder listing per open
        for split, pair in ((split, pair) for split, pairs in splits.items() for pair in pairs):
            image = _header(scan.headers, pair, pair.image, "image", problems)
            if source.windows is not None:  # a scene row: windows are checked, not sizes
                if image is not None:
                    _scan_scene(pair, image, config, scan, problems)
                continue
            mask = _header(scan.headers, pair, pair.mask, "mask", problems)
            if image is None or mask is None:
                continue
            if (image.height, image.width) != (mask.height, mask.width):
                problems.add(
                    "size",
                    f"{pair.where()}: image {image.path} is {image.size} but mask "
                    f"{mask.path} is {mask.size}",
                )
            else:
                misregistered = registration_problem(image, mask)
                if misregistered:
                    problems.add("registration", f"{pair.where()}: {misregistered}")
            image_example = f"{image.path}, {pair.where()}"
            sizes = scan.test_sizes if split == "test" else scan.sizes
            sizes.add((image.height, image.width), image_example)
            scan.image_bands.add(image.count, image_example)
            scan.image_dtypes.add(image.dtype, image_example)
            kind = mask_kind(mask.count)
            scan.mask_kinds.add(kind, f"{mask.path}, {pair.where()}")
            if kind == "onehot":
                scan.onehot_bands.add(mask.count, f"{mask.path}, {pair.where()}")
            bands_problem = check_bands(
                "data_source.image_bands", source.image_bands or (), image, "image"
            )
            if bands_problem:
                problems.add("image_bands", bands_problem)
            mask_problem = check_mask_bands(mask, source.mask_bands)
            if mask_problem:
                problems.add("mask_bands", mask_problem)
    return scan


def _scan_scene(
    pair: SamplePair,
    image: RasterHeader,
    config: LandsegConfig,
    scan: _Scan,
    problems: _Problems,
) -> None:
    """What a scene row adds: its labels, AOI and window (landseg.data.scene_checks)."""
    for kind, line in scene_row_problems(pair, image, config, scan.scenes):
        problems.add(kind, line)
    example = f"{image.path}, {pair.where()}"
    scan.image_bands.add(image.count, example)
    scan.image_dtypes.add(image.dtype, example)
    bands_problem = check_bands(
        "data_source.image_bands", config.data_source.image_bands or (), image, "image"
    )
    if bands_problem:
        problems.add("image_bands", bands_problem)


def _grid_windows(
    pairs: list[SamplePair], headers: dict[Path, RasterHeader | None], size: int, stride: int
) -> int:
    """The grid windows of these scene rows (those whose window fits)."""
    total = 0
    for pair in pairs:
        header = headers.get(pair.image)
        if header is not None and min(header.height, header.width) >= size:
            rows = grid_offsets(header.height, size, stride)
            total += len(rows) * len(grid_offsets(header.width, size, stride))
    return total


def _header(
    cache: dict[Path, RasterHeader | None],
    pair: SamplePair,
    path: Path,
    what: str,
    problems: _Problems,
) -> RasterHeader | None:
    """The raster's header, read once per path; None (and a problem) when it cannot be read."""
    if path not in cache:
        if not path.is_file():
            problems.add("missing", f"{pair.where()}: {what} {path} does not exist")
            cache[path] = None
        else:
            try:
                cache[path] = read_header(path)
            except DataError as err:
                problems.add("unreadable", f"{pair.where()}: {err.problems[0]}")
                cache[path] = None
    return cache[path]


def _require_one(examples: _Examples, message: str, problems: _Problems) -> None:
    if len(examples.seen) > 1:
        problems.add("mixed", f"{message}: {examples.listing()}")


def _check_val_split(
    splits: dict[str, list[SamplePair]], config: LandsegConfig, problems: _Problems
) -> None:
    n_train, n_val = len(splits["train"]), len(splits["val"])
    if n_train + n_val and (n_train < 1 or n_val < 1):
        problems.add(
            "percentage_val",
            f"data_source.percentage_val: {config.data_source.percentage_val} of the "
            f"{n_train + n_val} rows of {config.data_source.train_file} gives {n_val} "
            f"validation and {n_train} training rows; each needs at least 1 "
            "(change it or set data_source.val_file)",
        )


def _check_weights(config: LandsegConfig, n_bands: int, problems: _Problems) -> None:
    weights = config.data_source.normalization_weights
    for split in ("train", "val", "test"):
        stats = getattr(weights, split) if weights else None
        if stats is not None and len(stats.mean) != n_bands:
            problems.add(
                "normalization_weights",
                f"data_source.normalization_weights.{split}.mean has {len(stats.mean)} values "
                f"but {n_bands} image bands are used",
            )


def _count_classes(
    config: LandsegConfig,
    kind: MaskKind | None,
    onehot_counts: _Examples,
    headers: dict[Path, RasterHeader | None],
    problems: _Problems,
) -> tuple[int | None, str, int]:
    """(classes, or None when unknown; what the count comes from; masks whose pixels were read)."""
    source = config.data_source
    if kind == "onehot" and source.mask_bands:
        return len(source.mask_bands), "one per band of data_source.mask_bands", 0
    if kind == "onehot":
        count = cast("int | None", onehot_counts.single())
        return count, "one per band of the one-hot masks", 0
    if kind != "index":
        return None, "", 0
    masks = [h.path for h in headers.values() if h is not None and mask_kind(h.count) == "index"]
    if source.class_labels:
        return len(source.class_labels), "one per label", _warn_unlabelled_classes(config, masks)
    if len(masks) > MAX_MASKS_READ:
        problems.add(
            "class_labels",
            f"data_source.class_labels is required for single-band class-index masks: there "
            f"are {len(masks)} masks (landseg counts classes from the pixels of at most "
            f"{MAX_MASKS_READ}); give one label per class value 0..n-1",
        )
        return None, "", 0
    top = -1
    for path in masks:
        try:
            top = max(top, index_mask_max(path, source.ignore_index))
        except DataError as err:
            problems.add("unreadable", err.problems[0])
    if top < 0:
        problems.add("class_labels", "the class-index masks hold no class value (all nodata)")
        return None, "", len(masks)
    return top + 1, "the largest class value in the masks + 1", len(masks)


def _count_scene_classes(
    config: LandsegConfig, kind: MaskKind | None, scan: _Scan, problems: _Problems
) -> tuple[int | None, str, int]:
    """Scene rows: classes from the config or one-hot bands, never from a scene's pixels
    (reading whole label rasters would break the bounded memory of windowed reads)."""
    source = config.data_source
    if source.mask_bands and kind == "onehot":
        return len(source.mask_bands), "one per band of data_source.mask_bands", 0
    if source.class_labels:
        return len(source.class_labels), "one per label", 0
    if kind == "onehot":
        return cast("int | None", scan.onehot_bands.single()), "one per band of the labels", 0
    if kind is not None:
        problems.add(
            "class_labels",
            "data_source.class_labels is required for scene rows with class-index or vector "
            "labels (landseg does not read whole scenes to count classes)",
        )
    return None, "", 0


def _warn_unlabelled_classes(config: LandsegConfig, masks: list[Path]) -> int:
    """Warn when a sample of the index masks holds class values beyond class_labels: their
    pixels are ignored (docs/design.md), which is right for an "unlabelled" value the config
    did not declare, and a silent loss of classes when the labels are too few. Returns the
    masks read."""
    source = config.data_source
    labels = len(source.class_labels or ())
    step = max(1, len(masks) // LABEL_SAMPLE_MASKS)
    sample = masks[::step][:LABEL_SAMPLE_MASKS]
    top, where = -1, None
    for path in sample:
        try:
            value = index_mask_max(path, source.ignore_index)
        except DataError:
            continue  # unreadable: reported by the header checks, or by training
        if value > top:
            top, where = value, path
    if top >= labels:
        log.warning(
            "data_source.class_labels names %d classes, but mask %s holds class value %d: "
            "pixels of values %d-%d are ignored; add their labels, or declare them with "
            "data_source.ignore_index or the masks' nodata",
            labels,
            where,
            top,
            labels,
            top,
        )
    return len(sample)


def _check_class_lengths(
    config: LandsegConfig, n_classes: int, basis: str, problems: _Problems
) -> None:
    labels = config.data_source.class_labels
    if labels is not None and len(labels) != n_classes:
        problems.add(
            "data_source.class_labels",
            f"data_source.class_labels has {len(labels)} values but there are {n_classes} "
            f"classes ({basis})",
        )
