"""Subcommands after training: ``runs``, ``archive``, ``report``, ``predict``, ``evaluate``,
``export``.

Registered into ``landseg``'s parser (see landseg.cli.main); heavy modules are imported inside the
handlers so ``landseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from landseg.config.choices import (
    OUTPUT_TYPES,
    class_map_types,
    describe,
    describe_formats,
    formats_for,
)
from landseg.core.errors import LandsegError

_RUN_HELP = (
    "a run folder, a run's name (e.g. archived_v1_2026-11-22, or EXP/archived_v1_2026-11-22 "
    "when several experiments have one; searched under --output-folder), a .ckpt file, or a "
    ".pth file inside its run folder"
)


def _finite(text: str, *, zero: bool) -> float:
    """A finite number above 0 (or at least 0 with ``zero``): ``float()`` also reads nan and
    inf, which would pass as values."""
    value = float(text)
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        bound = ">= 0" if zero else "above 0"
        raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text}")
    return value


def _positive(text: str) -> float:
    return _finite(text, zero=False)


def _non_negative(text: str) -> float:
    return _finite(text, zero=True)


def _shard(text: str) -> tuple[int, int]:
    from landseg.inference.job import parse_shard

    try:
        return parse_shard(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--shard: ")) from error


def register(add: Callable[..., Any]) -> None:
    """Add this package's subcommands with ``add(name, handler, help_text)``."""
    runs = add("runs", cmd_runs, "list the runs of an output folder (both layouts)")
    runs.add_argument("output_folder", nargs="?", type=Path, default=Path("."))
    runs.add_argument("--json", action="store_true", help="print JSON, for scripts")

    archive = add("archive", cmd_archive, "rename a validated run to archived_vX_yyyy-mm-dd")
    archive.add_argument(
        "run", help="a run folder (or its name or EXP/NAME, searched under --output-folder)"
    )
    _output_folder(archive, "where archive.json is kept (default: from the run's layout)")

    report = add("report", cmd_report, "write RUN/report/index.html: curves, scores, samples")
    report.add_argument("run", help="a run folder or a run's name (or EXP/NAME)")
    _output_folder(report)
    report.add_argument("--samples", type=int, default=6, help="sample tiles shown (default 6)")
    report.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))

    predict = add("predict", cmd_predict, "predict whole scenes of any size into GeoTIFFs")
    which = predict.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help=_RUN_HELP)
    which.add_argument(
        "--model",
        type=Path,
        help="instead of --run: a .onnx or .pt file written by landseg export (its metadata "
        "gives the bands, normalisation, classes and tile size)",
    )
    which.add_argument(
        "--mosaic",
        type=Path,
        metavar="DIR",
        help="instead of predicting: write DIR/mosaic.vrt and DIR/areas.csv over the rasters "
        "of the job in DIR finished so far (a job writes them itself when its last input is "
        "finished)",
    )
    predict.add_argument(
        "--mosaic-cog",
        action="store_true",
        help="with the mosaic (at the end of a job, or with --mosaic DIR): also DIR/mosaic.tif, "
        "one Cloud-Optimised GeoTIFF with overviews copied from DIR/mosaic.vrt, in bounded "
        "memory",
    )
    predict.add_argument("--input", type=Path, help="a raster, a CSV of images, or a folder")
    predict.add_argument("--output", type=Path, help="folder of the predictions")
    predict.add_argument(
        "--glob",
        metavar="PATTERN",
        default=None,
        help="with a folder --input: the files to predict (e.g. 'scene_*.tif', '**/*.tif'; "
        "default: its .tif and .tiff files)",
    )
    predict.add_argument(
        "--type",
        dest="output_type",
        default="classes",
        choices=OUTPUT_TYPES.names(),
        help="what each file holds (default classes): " + describe(OUTPUT_TYPES),
    )
    _prediction_args(predict)
    predict.add_argument(
        "--workers",
        type=int,
        default=1,
        help="scenes predicted at once, each worker process with its own model (one GPU each "
        "when there are GPUs, else a share of the cores); default 1",
    )
    predict.add_argument(
        "--aoi",
        type=Path,
        default=None,
        metavar="FILE",
        help="area of interest: a polygon file (GeoPackage, Shapefile, GeoJSON...); pixels "
        "outside are nodata and never sent through the model; a scene outside it is written "
        "as nodata without being read",
    )
    predict.add_argument(
        "--shard",
        type=_shard,
        default=None,
        metavar="I/N",
        help="predict only input k of the sorted inputs with k mod N = I (one task of a "
        "SLURM job array: --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT); every "
        "shard records its inputs in the same --output job",
    )
    predict.add_argument(
        "--overwrite",
        action="store_true",
        help="start the job in --output over: forget the inputs an earlier launch finished "
        "(by default they are skipped, and a scene left half way is continued)",
    )
    vectors = predict.add_argument_group("vectors (needs the vector extra)")
    vectors.add_argument(
        "--vectorize",
        action="store_true",
        help="also write DIR/<stem>.gpkg: one polygon per 4-connected region of the class map, "
        "fields class_id and class_name, in the scene's CRS (with --type classes)",
    )
    vectors.add_argument(
        "--classes",
        default=None,
        metavar="LIST",
        help="with --vectorize: the classes to keep, by name or id, comma-separated",
    )
    vectors.add_argument(
        "--min-area",
        type=_positive,
        default=None,
        help="with --vectorize: regions smaller than this (map units squared) are sieved into "
        "their neighbours first (not on a geographic CRS)",
    )
    vectors.add_argument(
        "--simplify",
        type=_non_negative,
        default=None,
        help="with --vectorize: simplification tolerance in map units (default: none)",
    )
    _output_folder(predict)

    evaluate = add("evaluate", cmd_evaluate, "score predictions against masks (history format)")
    evaluate.add_argument("--predictions", type=Path, help="folder of prediction rasters")
    evaluate.add_argument("--masks", type=Path, help="CSV of image,mask rows")
    evaluate.add_argument("--run", help=_RUN_HELP + "; predicts --csv first")
    evaluate.add_argument("--csv", type=Path, help="with --run: CSV of image,mask rows")
    evaluate.add_argument("--output", type=Path, help="JSON file (default: evaluation.json)")
    _prediction_args(evaluate)
    _output_folder(evaluate)

    export = add(
        "export",
        cmd_export,
        "write a run's model as ONNX or TorchScript with its metadata and a STAC item, or its "
        "encoder alone (safetensors)",
    )
    export.add_argument("run", help=_RUN_HELP)
    export.add_argument(
        "--format",
        dest="formats",
        action="append",
        choices=formats_for("portable"),
        default=None,
        help="repeat it for several (default onnx; into RUN/exports): "
        + describe_formats("portable"),
    )
    export.add_argument(
        "--tile", type=int, default=None, help="the model's fixed tile size in pixels (256)"
    )
    export.add_argument(
        "--overlap",
        type=int,
        default=None,
        help="tile overlap in pixels recorded for prediction (default: a quarter of the tile)",
    )
    export.add_argument(
        "--pixel-range",
        type=_positive,
        default=None,
        help="value that maps to 1.0 (default: the run's data_source.pixel_range, else by "
        "the dtype of its training images)",
    )
    export.add_argument(
        "--output", type=Path, default=None, help="folder of the files (default: RUN/exports)"
    )
    _output_folder(export)


def _output_folder(parser: argparse.ArgumentParser, text: str | None = None) -> None:
    parser.add_argument(
        "--output-folder",
        type=Path,
        default=None,
        help=text or "where run names are searched (default: the working directory)",
    )


def _prediction_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tile", type=int, default=None, help="tile size in pixels (256; --model: the export's)"
    )
    parser.add_argument(
        "--overlap",
        type=int,
        default=None,
        help="tile overlap in pixels (a quarter of the tile: 64 for 256; --model: the export's)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="tiles per forward pass (8)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--pixel-range",
        type=_positive,
        default=None,
        help="value that maps to 1.0 (default: the run's data_source.pixel_range, else by dtype)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--tta",
        nargs="?",
        const="d4",
        choices=("d4", "flips", "rot90"),
        default=None,
        help="test-time augmentation: probabilities averaged over the 8 rotations and flips "
        "(d4, about 8x the time; bare --tta), the 4 flips or the 4 rotations, before the argmax",
    )


# ---------------------------------------------------------------------------- runs / archive


def cmd_runs(args: argparse.Namespace) -> int:
    from landseg.runs.catalog import list_runs

    infos = list_runs(args.output_folder)
    if args.json:
        print(json.dumps([info.as_json() for info in infos], indent=2))
        return 0
    if not infos:
        print(f"no runs under {args.output_folder}")
        return 0
    _print_runs_table(infos, args.output_folder)
    return 0


def _print_runs_table(infos: list[Any], output: Path) -> None:
    from rich.table import Table

    from landseg.runs.catalog import human_size

    colours = {"finished": "green", "running": "blue", "failed": "red", "interrupted": "yellow"}
    table = Table(title=f"runs in {output}")
    for name, justify in (
        ("experiment", "left"),
        ("version", "left"),
        ("model", "left"),
        ("data", "left"),
        ("epochs", "right"),
        ("val_loss", "right"),
        ("val_miou", "right"),
        ("status", "left"),
        ("size", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for info in infos:
        colour = colours.get(info.status, "white")
        table.add_row(
            info.experiment,
            info.version,
            info.model or "-",
            info.data or "-",
            f"{info.epochs_done}/{info.epochs if info.epochs is not None else '?'}",
            f"{info.val_loss:.4f}" if info.val_loss is not None else "-",
            f"{info.val_miou:.4f}" if info.val_miou is not None else "-",
            f"[{colour}]{info.status}[/{colour}]",
            human_size(info.size),
        )
    _console().print(table)


def _console() -> Any:
    """stdout; piped or captured, wide enough that table cells are never cut."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, 160))


def cmd_archive(args: argparse.Namespace) -> int:
    from landseg.jobs.plan import job_of_task
    from landseg.runs.catalog import archive_run, resolve_run

    run = resolve_run(args.run, args.output_folder)
    job = job_of_task(run)
    if job is not None:
        raise LandsegError(
            f"{run}: a task of the cross-validation job {job}, whose summary and status "
            "need it where it is; archive a copy of the task folder, or of the whole job"
        )
    target = archive_run(run, args.output_folder)
    print(f"archived {run} as {target.name}: {target}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from landseg.reports.report import write_report
    from landseg.runs.catalog import resolve_run

    if args.samples < 0:
        raise LandsegError(f"--samples must be >= 0, got {args.samples}")
    _refuse_a_cv_job(Path(args.run))
    page = write_report(resolve_run(args.run, args.output_folder), args.samples, args.device)
    print(f"report: {page}")
    return 0


def _refuse_a_cv_job(path: Path) -> None:
    """A cv job folder (its ``job.sqlite``) is no run: say where its report is, and its runs."""
    from landseg.jobs.folder import JobFolder

    job = JobFolder(path)
    if path.is_dir() and job.is_job:
        raise LandsegError(
            f"{path}: a cross-validation job folder, not a run folder; its summary is "
            f"{job.summary_md} (written when the job ends; `landseg cv status {path}` shows "
            f"its progress), and `landseg report` takes one of its task runs, "
            f"{job.tasks}/<task id>"
        )


# ---------------------------------------------------------------------------- predict / evaluate


def _load(args: argparse.Namespace) -> Any:
    """The model to predict with: a run's checkpoint (``--run``) or an export (``--model``),
    wrapped in test-time augmentation with ``--tta``."""
    from landseg.inference.tta import with_tta

    if getattr(args, "model", None) is not None:
        from landseg.inference.portable import PortableModel

        return with_tta(PortableModel.load(args.model, args.device), args.tta)
    from landseg.inference.scene import LoadedModel
    from landseg.runs.catalog import resolve_checkpoint

    checkpoint = resolve_checkpoint(args.run, args.output_folder)
    return with_tta(LoadedModel.load(checkpoint, args.device), args.tta)


#: ``--tile`` of a checkpoint's prediction when not given; ``--overlap`` is then a quarter of
#: the tile (64 px for 256), as ``landseg export`` records it.
DEFAULT_TILE = 256


def _options(args: argparse.Namespace, output_type: str, export: Any = None) -> Any:
    """Prediction options; with an export (``--model``), its tile size and overlap by default,
    and no other tile size (its input is fixed)."""
    from landseg.inference.scene import PredictOptions, Tiling

    if args.pixel_range is not None and args.pixel_range <= 0:
        raise LandsegError(f"--pixel-range must be > 0, got {args.pixel_range}")
    tile, overlap = args.tile, args.overlap
    if export is not None:
        if tile is not None and tile != export.tile:
            raise LandsegError(
                f"--tile {tile}: {export.checkpoint.name} takes {export.tile} px tiles only "
                "(leave --tile out, or export again with another --tile)"
            )
        tile = export.tile
        overlap = export.overlap if overlap is None else overlap
    tile = DEFAULT_TILE if tile is None else tile
    tiling = Tiling(tile, tile // 4 if overlap is None else overlap, args.batch_size)
    aoi = None
    if getattr(args, "aoi", None) is not None:
        from landseg.maps.aoi import AreaOfInterest

        aoi = AreaOfInterest.read(args.aoi)
    return PredictOptions(tiling, output_type, args.pixel_range, aoi)


def _vector_classes(text: str | None, labels: list[str]) -> list[int] | None:
    """``--classes water,3`` -> class ids, names and ids alike; None: every class."""
    if text is None:
        return None
    ids = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        if item.isdigit() and int(item) < len(labels):
            ids.append(int(item))
        elif item in labels:
            ids.append(labels.index(item))
        else:
            from landseg.core.registry import unknown_name_message

            raise LandsegError("--classes: " + unknown_name_message("class", item, labels))
    return ids


def _check_vector_options(args: argparse.Namespace) -> None:
    given = [
        flag
        for flag, value in (("--classes", args.classes), ("--min-area", args.min_area))
        if value is not None
    ] + (["--simplify"] if args.simplify is not None else [])
    if not args.vectorize:
        if given:
            raise LandsegError(f"{given[0]}: only with --vectorize")
        return
    maps = class_map_types()
    if args.output_type not in maps:
        raise LandsegError(
            f"--vectorize: polygons are made from class maps; use --type {' or '.join(maps)}, "
            f"not {args.output_type}"
        )
    import importlib.util

    if importlib.util.find_spec("shapely") is None or importlib.util.find_spec("pyogrio") is None:
        raise LandsegError("--vectorize: needs shapely and pyogrio: pip install 'landseg[vector]'")


def _refuse_geographic(inputs: list[Path]) -> None:
    """--min-area is in map units squared: refused before anything is predicted on degrees."""
    import rasterio

    for path in inputs:
        with rasterio.open(path) as src:
            if src.crs is not None and src.crs.is_geographic:
                raise LandsegError(
                    f"--min-area is in map units squared: {path} has a geographic CRS "
                    "(degrees); reproject it first"
                )


@dataclass(frozen=True)
class PredictPlan:
    """``landseg predict``, decided before any prediction is written: the model (loaded,
    with its test-time augmentation), the scenes, the options and the polygons asked."""

    model: Any  # LoadedModel or PortableModel, wrapped for --tta
    portable: bool  # --model: an export; else a run's checkpoint
    inputs: list[Path]
    output: Path
    options: Any  # PredictOptions
    workers: int
    progress: bool
    device: str
    tta: str | None
    hint: str | None  # how to choose a folder's files, for the message of a failed scene
    vectors: bool
    vector_classes: list[int] | None
    min_area: float | None
    simplify: float | None
    job: Any  # PredictJob: the state of the job in ``output``
    identity: Any  # JobIdentity: the model and settings this launch predicts with
    todo: list[Path]  # the inputs this launch predicts (not finished earlier)
    overwrite: bool
    shard: tuple[int, int] | None  # --shard i/n: ``inputs`` are this shard's
    everything: list[Path]  # the inputs of the whole job (of every shard)
    ranks: Any = None  # landseg.jobs.predict_ranks.Ranks under mpiexec: ``inputs`` are its rank's
    mosaic_cog: bool = False  # --mosaic-cog: DIR/mosaic.tif with the mosaic
    # scenes cut in pieces of rows among MPI ranks (PredictJob.pieces): every one of the job
    cut: dict[Path, list[tuple[int, int]]] = field(default_factory=dict)
    # under mpiexec, the pieces of cut scenes this rank predicts (else: all of them)
    rows: dict[Path, list[tuple[int, int]]] = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        return len(self.inputs) - len(self.todo)

    def describe(self) -> list[str]:
        """The plan in a few lines (what is predicted, with what, where)."""
        tiling = self.options.tiling
        shard = f" (shard {self.shard[0]}/{self.shard[1]})" if self.shard else ""
        if self.ranks is not None:
            shard += f" (MPI rank {self.ranks.rank} of {self.ranks.size})"
        return (
            [
                f"{len(self.inputs)} scene(s){shard} -> {self.output} ({self.options.output_type})",
                *([self.skip_line()] if self.skipped else []),
                f"model {self.model.checkpoint}"
                + (f", test-time augmentation {self.tta}" if self.tta else ""),
                f"tiles {tiling.tile} px, overlap {tiling.overlap} px, batches of "
                f"{tiling.batch_size}, {self.workers} worker(s)",
            ]
            + (["polygons: <scene>.gpkg beside each class map"] if self.vectors else [])
            + [
                f"{source.name}: in {len(pieces)} pieces of rows, assembled once all are in"
                for source, pieces in self.cut.items()
            ]
        )

    def skip_line(self) -> str:
        return f"{self.skipped} of {len(self.inputs)} inputs finished in an earlier launch: skipped"


def plan_predict(args: argparse.Namespace) -> PredictPlan:
    """Every check of ``landseg predict`` (options, inputs, model), nothing written."""
    from landseg.inference.scene import collect_inputs

    if args.input is None or args.output is None:
        raise LandsegError("predict needs --input and --output (or --mosaic DIR alone)")
    _check_vector_options(args)
    if args.workers < 1:
        raise LandsegError(f"--workers: must be at least 1, got {args.workers}")
    inputs = everything = collect_inputs(args.input, args.glob)
    if args.vectorize and args.min_area is not None:
        _refuse_geographic(inputs)
    if args.model is not None:
        model = _load(args)
        options = _options(args, args.output_type, model)
    else:
        options = _options(args, args.output_type)
        model = _load(args)
    classes = _vector_classes(args.classes, list(model.class_labels)) if args.vectorize else None
    hint = (
        "choose the folder's files with --glob PATTERN"
        if args.input.is_dir() and args.glob is None
        else None
    )
    if args.shard is not None:
        from landseg.inference.job import shard_inputs

        if args.overwrite:
            raise LandsegError(
                "--overwrite with --shard: each shard would remove the work of the others; "
                "start the job over once without --shard, or predict into a new --output"
            )

        inputs = shard_inputs(inputs, args.shard)
    ranks = _ranks()
    job, identity = _job(args, model, options, classes)
    cut = _cuts(job, inputs, args, ranks, options.tiling.stride)
    rows: dict[Path, list[tuple[int, int]]] = {}
    if ranks is not None:  # the work left is shared out; rank 0 also tidies what is finished
        from landseg.inference.job import share_pieces

        left = [p for p in inputs if args.overwrite or not job.is_done(p)]
        share, rows = share_pieces(left, cut, ranks.shard)
        inputs = [p for p in inputs if p not in left and ranks.rank == 0] + share
    todo = list(inputs) if args.overwrite else [p for p in inputs if not job.is_done(p)]
    return PredictPlan(
        model=model,
        portable=args.model is not None,
        inputs=inputs,
        output=args.output,
        options=options,
        workers=args.workers,
        progress=not args.no_progress,
        device=args.device,
        tta=args.tta,
        hint=hint,
        vectors=args.vectorize,
        vector_classes=classes,
        min_area=args.min_area,
        simplify=args.simplify,
        job=job,
        identity=identity,
        todo=todo,
        overwrite=args.overwrite,
        shard=args.shard,
        everything=everything,
        ranks=ranks,
        mosaic_cog=args.mosaic_cog,
        cut=cut,
        rows=rows,
    )


def _cuts(
    job: Any, inputs: list[Path], args: argparse.Namespace, ranks: Any, stride: int
) -> dict[Path, list[tuple[int, int]]]:
    """The scenes predicted in pieces of rows: under ``mpiexec -n N`` (one process a rank),
    each unfinished input tall enough (:func:`landseg.inference.job.cut_rows`) that no
    launch has begun whole (its rows on disk would be lost); in any launch predicting in
    turn, the scenes an earlier launch cut (their pieces' progress is kept in those terms),
    unless the input's height has changed since, or a launch with ``--workers`` has since
    put more of its rows on disk whole. With ``--workers``, none: a scene is one worker's,
    whole."""
    from landseg.data.raster import open_raster
    from landseg.inference.job import cut_rows

    if args.workers > 1:
        return {}
    cut = {}
    for source in inputs:
        earlier = not args.overwrite and job.pieces(source) is not None
        whole_rows = 0 if args.overwrite else job.rows_done(source)  # begun whole
        fresh = ranks is not None and (args.overwrite or not (whole_rows or job.is_done(source)))
        if not (earlier or fresh):
            continue
        with open_raster(source) as src:
            height, width = src.height, src.width
        pieces = job.pieces(source, height) if earlier else None
        if pieces is not None and whole_rows:  # begun whole since (--workers)
            in_pieces = sum(
                part.rows_done - part.first_row
                for part in (job.part(source, height, width, rows) for rows in pieces)
            )
            if whole_rows > in_pieces:
                continue  # the more rows on disk are kept: continued whole
        if pieces is None and fresh:
            pieces = cut_rows(height, ranks.size, stride)
        if pieces is not None and len(pieces) > 1:
            cut[source] = pieces
    return cut


def _ranks() -> Any:
    """Under ``mpiexec -n N`` (N > 1): this process's rank (see landseg.jobs.predict_ranks)."""
    from landseg.jobs.mpi import launched_by_mpi

    if not launched_by_mpi():
        return None
    from landseg.jobs.predict_ranks import predict_ranks

    return predict_ranks()


def _job(
    args: argparse.Namespace, model: Any, options: Any, classes: list[int] | None
) -> tuple[Any, Any]:
    """The job in ``--output`` and this launch's identity; refused (one line naming the
    setting, old -> new) when the folder holds another job and ``--overwrite`` is not given."""
    from landseg.inference.job import JobIdentity, PredictJob, file_sha256

    tiling = options.tiling
    settings = {
        "type": options.output_type,
        "tile": tiling.tile,
        "overlap": tiling.overlap,
        "tta": args.tta,
        "pixel_range": args.pixel_range,
        "vectorize": bool(args.vectorize),
        "classes": classes,
        "min_area": args.min_area,
        "simplify": args.simplify,
        "aoi": str(args.aoi.absolute()) if args.aoi is not None else None,
        "aoi_sha256": file_sha256(args.aoi) if args.aoi is not None else None,
    }
    checkpoint = Path(model.checkpoint)
    identity = JobIdentity(str(checkpoint), file_sha256(checkpoint), settings)
    job = PredictJob(args.output)
    if not args.overwrite:
        refusal = job.refusal(identity)
        if refusal is not None:
            raise LandsegError(refusal)
    return job, identity


def execute_predict(plan: PredictPlan) -> list[Path]:
    """Predict the plan's scenes not finished earlier (and their polygons), each recorded in
    the job as it is finished; returns the rasters written by this launch.

    A stop signal (SIGINT, SIGTERM, SIGUSR1) ends the launch between two strips of a scene:
    what is written is kept, and the same command continues it (exit 128 + the signal).
    """
    from landseg.core.signals import EARLY_STOP_SIGNALS, StopSignals
    from landseg.inference.scene import check_inputs

    ranks = plan.ranks
    alone = plan.shard is None
    if ranks is None:
        check_inputs(plan.model, plan.todo, plan.options, plan.hint, plan.output)
        plan.job.start(plan.identity, plan.overwrite, alone=alone)
    else:  # every rank checks its inputs; rank 0 alone begins the job, the others read it
        pieces = "".join(
            f", {source.name} rows {first}-{stop}"
            for source, rows in plan.rows.items()
            for first, stop in rows
        )
        print(f"MPI rank {ranks.rank} of {ranks.size}: {len(plan.inputs)} of "
              f"{len(plan.everything)} input(s){pieces}")  # fmt: skip
        _together(ranks, lambda: check_inputs(
            plan.model, plan.todo, plan.options, plan.hint, plan.output))  # fmt: skip
        _together(ranks, lambda: _begin(plan, alone) if ranks.rank == 0 else None)
        if ranks.rank != 0:
            plan.job.start(plan.identity, overwrite=False, alone=False)
    if plan.skipped:
        todo = set(plan.todo)
        plan.job.tidy([p for p in plan.inputs if p not in todo])
        print(plan.skip_line())
    model = plan.model
    with StopSignals(EARLY_STOP_SIGNALS) as stops:
        try:
            if plan.workers > 1:
                written = _predict_parallel(plan, stops)
            else:
                written = _predict_in_turn(plan, stops)
        except BaseException as error:
            _mark_requeue(error)
            if ranks is not None:
                ranks.agree(error)  # the others are not left waiting for this rank
            raise
        if ranks is not None:  # every rank done: rank 0 alone assembles cut scenes, mosaics
            _all_done(ranks, stops)
        if ranks is not None and ranks.rank == 0:  # a stop signal meanwhile: finished first,
            written += _assemble_cut_scenes(plan)  # as a launch without MPI finishes a scene
    print(f"{len(written)} prediction(s) written to {plan.output} ({model.checkpoint.name})")
    if ranks is not None and ranks.rank != 0:
        return written
    from landseg.maps.mosaic import MOSAIC_FILE

    left = len(plan.everything) - len(plan.job.finished(plan.everything))
    if left == 0:
        if (
            written
            or not (plan.output / MOSAIC_FILE).is_file()
            or (plan.mosaic_cog and not (plan.output / "mosaic.tif").is_file())
        ):  # else: as it was
            _write_mosaic(plan.output, plan.mosaic_cog)
    else:
        print(f"mosaic: written when the {left} input(s) left are finished (or: landseg "
              f"predict --mosaic {plan.output})")  # fmt: skip
    return written


def _all_done(ranks: Any, stops: Any) -> None:
    """Wait for every rank, this rank's stop signals still handled: a rank whose share is
    done waits for the others (pieces of a scene are seldom even), and a stop signal then
    must not kill it by the signal's default action (MPI would kill the ranks still at work
    before their next strip, and SLURM's SIGUSR1 would not requeue the job). Stopped by the
    same signal as the others, it exits as they do, 128 + the signal."""
    from landseg.inference.scene import PredictionStopped

    try:
        ranks.agree(None)
    except LandsegError:
        if stops.requested is None:
            raise
        stopped = PredictionStopped(stops.requested, "while waiting for the other ranks")
        _mark_requeue(stopped)
        raise stopped from None


def _begin(plan: PredictPlan, alone: bool) -> None:
    """Rank 0 begins the job and records the scenes it cuts, before any rank predicts."""
    plan.job.start(plan.identity, plan.overwrite, alone=alone)
    for source, pieces in plan.cut.items():
        if not plan.job.is_done(source):
            plan.job.cut(source, pieces)


def _assemble_cut_scenes(plan: PredictPlan) -> list[Path]:
    """Rank 0, once every rank is done: the COG of each cut scene whose pieces are all in."""
    written = []
    for source in plan.cut:
        if not plan.job.is_done(source):
            parts = _pieces(plan, source)
            if all(part.done for part in parts):
                written.append(_assemble(plan, source, parts))
    return written


def _pieces(plan: PredictPlan, source: Path) -> list[Any]:
    """The progress of each piece of a cut scene (see PredictJob.part)."""
    from landseg.data.raster import open_raster

    with open_raster(source) as src:
        return [plan.job.part(source, src.height, src.width, rows) for rows in plan.cut[source]]


def _assemble(plan: PredictPlan, source: Path, parts: list[Any]) -> Path:
    """A cut scene's pieces copied into its COG, then finished as a scene predicted whole."""
    from landseg.inference.scene import assemble_scene, prediction_path

    raster = assemble_scene(
        plan.model, source, prediction_path(plan.output, source), plan.options, parts
    )
    print(f"{source.name}: {len(parts)} pieces assembled into {raster.name}")
    _finish(plan, source, raster, sum(part.tiles for part in parts))
    return raster


def _together(ranks: Any, step: Callable[[], object]) -> None:
    """``step`` on this rank, then wait for every rank: a failure on any rank fails all."""
    try:
        step()
    except BaseException as error:
        ranks.agree(error)
        raise
    ranks.agree(None)


def _write_mosaic(folder: Path, cog: bool = False) -> None:
    """``mosaic.vrt`` and ``areas.csv`` over the job's finished rasters, ``mosaic.gpkg`` over
    their polygons (with --vectorize); scenes on another grid than most are left out of the
    mosaics, in one line."""
    from landseg.inference.job import PredictJob
    from landseg.maps.mosaic import write_areas, write_mosaic
    from landseg.maps.mosaic_vectors import grid_groups, write_mosaic_vectors

    job = PredictJob(folder)
    rasters = job.finished_rasters()
    groups = grid_groups(rasters)
    if groups.line():
        print(f"mosaic: {groups.line()}")
    print(f"mosaic of {len(groups.main)} raster(s): {write_mosaic(folder, groups.main)}")
    areas = write_areas(folder, rasters)
    if areas is not None:
        print(f"areas per class: {areas}")
    if cog:
        from landseg.maps.mosaic import write_mosaic_cog

        print(f"mosaic as one COG: {write_mosaic_cog(folder, groups.main[0])}")
    vectors = set(job.finished_vectors())
    scenes = [(r, r.with_suffix(".gpkg")) for r in groups.main if r.with_suffix(".gpkg") in vectors]
    settings = (job.recorded() or {}).get("settings", {})  # merged before --simplify
    merged = write_mosaic_vectors(
        folder,
        scenes,
        simplify=settings.get("simplify"),
        classes=settings.get("classes"),
        min_area=settings.get("min_area"),
    )
    if merged is not None:
        print(
            f"polygons of {len(scenes)} scene(s), merged across scene borders "
            f"({merged.joined} piece(s) joined): {merged.polygons} polygons -> {merged.destination}"
        )


def _mark_requeue(error: BaseException) -> None:
    """A prediction stopped by SLURM's SIGUSR1 asks SLURM to requeue its job, as train does."""
    from landseg.core.errors import StopRequested
    from landseg.launch.cluster import requeue_wanted

    if isinstance(error, StopRequested):
        error.requeue = requeue_wanted(error.signum, True)


def _part(plan: PredictPlan, source: Path) -> Any:
    """Where ``source``'s prediction keeps its progress in the job (see PredictJob.part)."""
    from landseg.data.raster import open_raster

    with open_raster(source) as src:
        return plan.job.part(source, src.height, src.width)


def _predict_in_turn(plan: PredictPlan, stops: Any) -> list[Path]:
    from landseg.inference.scene import PredictionStopped, make_progress

    written = []
    with make_progress(plan.progress) as progress:
        for number, source in enumerate(plan.todo, start=1):
            raster: Path | None
            if source in plan.cut:
                raster = _predict_pieces(plan, source, progress, stops)
            else:
                part = _part(plan, source)
                if part.rows_done:
                    print(f"{source.name}: continued from row {part.rows_done} of {part.height}")
                raster = _predict_part(plan, source, part, progress, stops)
                _finish(plan, source, raster, part.tiles)
            if raster is not None:
                written.append(raster)
            if stops.requested is not None and number < len(plan.todo):
                raise PredictionStopped(
                    stops.requested, f"after {number} of {len(plan.todo)} inputs"
                )
    return written


def _predict_part(plan: PredictPlan, source: Path, part: Any, progress: Any, stops: Any) -> Path:
    """``source`` (or the piece of it ``part`` holds) predicted into the job, ``part``'s
    progress kept, a stop asked honoured at the next strip (see predict_scene)."""
    from landseg.inference.scene import predict_scene, prediction_path

    return predict_scene(
        plan.model,
        source,
        prediction_path(plan.output, source),
        plan.options,
        progress,
        part,
        lambda: stops.requested,
    )


def _predict_pieces(plan: PredictPlan, source: Path, progress: Any, stops: Any) -> Path | None:
    """The pieces of a cut scene this launch predicts (under mpiexec, its rank's; else all,
    then assembled into the scene's COG, which is returned)."""
    from landseg.inference.scene import PredictionStopped

    parts = _pieces(plan, source)
    mine = plan.rows.get(source, plan.cut[source])  # under mpiexec, this rank's
    todo = [part for part in parts if (part.first_row, part.stop_row) in mine and not part.done]
    for number, part in enumerate(todo, start=1):
        rows = f"rows {part.first_row}-{part.stop_row} of {part.height}"
        if part.rows_done > part.first_row:
            print(f"{source.name}: {rows}, continued from row {part.rows_done}")
        _predict_part(plan, source, part, progress, stops)
        if stops.requested is not None and number < len(todo):
            raise PredictionStopped(stops.requested, f"after {rows} of {source.stem}")
    if plan.ranks is not None:
        return None  # rank 0 assembles it once every rank is done
    return _assemble(plan, source, parts)


def _predict_parallel(plan: PredictPlan, stops: Any) -> list[Path]:
    from landseg.inference.parallel import ModelSource, predict_files_parallel

    model = plan.model
    source = ModelSource(Path(model.checkpoint), plan.portable, plan.device, plan.tta)
    parts = {scene: _part(plan, scene) for scene in plan.todo}
    return predict_files_parallel(
        model,
        source,
        plan.todo,
        plan.output,
        plan.options,
        plan.workers,
        plan.progress,
        plan.hint,
        parts=parts,
        stop=lambda: stops.requested,
        finished=lambda scene, raster, tiles: _finish(plan, scene, raster, tiles),
    )


def _finish(plan: PredictPlan, source: Path, raster: Path, tiles: int) -> None:
    """A scene's raster is written: its polygons (with --vectorize), then its record in the
    job, naming every file made for it."""
    outputs = [raster] + [p for p in (raster.with_suffix(".qml"),) if p.is_file()]
    if plan.vectors:
        from landseg.maps.vectorize import vectorize

        polygons = raster.with_suffix(".gpkg")
        summary = vectorize(
            raster,
            polygons,
            plan.model.class_labels,
            classes=plan.vector_classes,
            min_area=plan.min_area,
            simplify=plan.simplify,
        )
        for line in summary.lines():
            print(f"  {line}")
        outputs.append(polygons)
    plan.job.finish(source, outputs, tiles)


def cmd_predict(args: argparse.Namespace) -> int:
    if args.mosaic is not None:
        from landseg.inference.job import PredictJob

        if not PredictJob(args.mosaic).job_file.is_file():
            raise LandsegError(f"--mosaic {args.mosaic}: no prediction job here (no predict.json)")
        _write_mosaic(args.mosaic, args.mosaic_cog)
        return 0
    execute_predict(plan_predict(args))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from landseg.inference.evaluate import EVALUATION_FILE, MaskOptions, evaluate_predictions

    if args.run is not None:
        if args.csv is None or args.masks is not None:
            raise LandsegError("evaluate --run needs --csv CSV (image,mask rows), not --masks")
        from landseg.data.csvfiles import read_pairs
        from landseg.inference.scene import predict_files

        options = _options(args, "classes")
        model = _load(args)
        source = model.config.data_source
        if source.windows is not None:
            return _evaluate_scene_rows(args, model)
        predictions = args.predictions or (model.run / "evaluation" / args.csv.stem)
        _check_evaluation_output(args.output or Path(predictions) / EVALUATION_FILE, args.csv)
        images = [pair.image for pair in read_pairs(args.csv)]
        predict_files(model, images, predictions, options, not args.no_progress)
        entry = evaluate_predictions(
            predictions,
            args.csv,
            model.class_labels,
            MaskOptions(source.mask_bands, source.ignore_index),
        )
        entry["checkpoint"] = str(model.checkpoint)
    else:
        if args.predictions is None or args.masks is None:
            raise LandsegError(
                "evaluate needs --predictions DIR --masks CSV, or --run RUN --csv CSV"
            )
        predictions = args.predictions
        _check_evaluation_output(args.output or Path(predictions) / EVALUATION_FILE, args.masks)
        entry = evaluate_predictions(predictions, args.masks)
    from landseg.core.files import atomic_write_json

    output = args.output or Path(predictions) / EVALUATION_FILE
    atomic_write_json(output, entry)
    _print_scores(entry)
    print(f"written to {output}", file=sys.stderr)
    return 0


def _evaluate_scene_rows(args: argparse.Namespace, model: Any) -> int:
    """``evaluate --run`` of a run with ``data_source.windows``: the CSV's rows are scenes,
    scored on a grid of windows (landseg.inference.scene_eval); no prediction is written."""
    from landseg.core.files import atomic_write_json
    from landseg.inference.evaluate import EVALUATION_FILE
    from landseg.inference.scene_eval import SceneGrid, evaluate_scene_rows

    if args.predictions is not None:
        raise LandsegError(
            "evaluate --run on scene rows (the run sets data_source.windows) writes no "
            "predictions: leave --predictions out (landseg predict writes the scenes' maps)"
        )
    output = args.output or Path(model.run or ".") / "evaluation" / args.csv.stem / EVALUATION_FILE
    _check_evaluation_output(output, args.csv)
    grid = SceneGrid.of(model.config, args.tile, args.overlap, args.batch_size)
    entry = evaluate_scene_rows(model, args.csv, grid, args.pixel_range)
    entry["checkpoint"] = str(model.checkpoint)
    atomic_write_json(output, entry)
    _print_scores(entry)
    print(f"written to {output}", file=sys.stderr)
    return 0


def _check_evaluation_output(output: Path, rows_csv: Path) -> None:
    """Before any prediction: the scores' file can be written, and is not the CSV read."""
    if output.is_dir():
        raise LandsegError(f"--output {output}: a folder; give the JSON file to write")
    if output.resolve() == rows_csv.resolve():
        raise LandsegError(f"--output {output}: it is the CSV of masks read; choose another file")


def cmd_export(args: argparse.Namespace) -> int:
    from landseg.inference.portable import ExportOptions, export_run

    options = ExportOptions(args.tile, args.overlap, args.pixel_range)
    written = export_run(
        args.run, args.formats or ["onnx"], options, args.output_folder, args.output
    )
    for path in written:
        print(f"written: {path}")
    return 0


def _print_scores(entry: dict[str, Any]) -> None:
    from rich.table import Table

    from landseg.inference.evaluate import TABLE_METRICS, entry_labels

    table = Table(title=f"{entry['files']} file(s), {entry['pixels']:,} labelled pixels")
    table.add_column("class")
    for metric in TABLE_METRICS:
        table.add_column(metric, justify="right")
    for label in [*entry_labels(entry), "Average", "Overall"]:
        values = [entry.get(f"{label}/{metric}") for metric in TABLE_METRICS]
        table.add_row(label, *("-" if v is None else f"{v:.4f}" for v in values))
    _console().print(table)
