"""``landseg report RUN``: one self-contained HTML page that shows how a run went.

Written into ``RUN/report/``: ``index.html`` (every figure embedded as a base64 PNG data URI,
inline CSS, no external asset, so the page can be mailed or archived alone) and the same
figures as PNG files. The page holds the run's summary, a metrics table, the learning curves
(``logs/scalars.jsonl``, completed by ``history.json``), the confusion matrix in counts and
row-normalised, per-class IoU/F1 bars (from the test history, else the last validation
epoch), and sample tiles of the test split (else val) with image, mask and the prediction of
the best val_loss checkpoint side by side, in the run's class colours
(``output_setup.class_colors``, else the default palette: :func:`landseg.maps.style.run_colors`).
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from landseg.callbacks.history import read_history
from landseg.callbacks.run_logger import read_scalars
from landseg.core.errors import LandsegError
from landseg.core.files import atomic_write_bytes, atomic_write_text
from landseg.inference.evaluate import TABLE_METRICS, entry_labels
from landseg.loggers.figures import (
    colorize,
    confusion_matrix_figure,
    display_image,
    learning_curves,
    new_figure,
    per_class_bars,
)
from landseg.maps.style import rgb_palette, run_colors
from landseg.runs.catalog import effective_status
from landseg.runs.folder import RunFolder, RunState, now_iso

log = logging.getLogger(__name__)

REPORT_FILE = "index.html"


@dataclass
class Section:
    """One figure of the page: its file name, heading and a line saying what it shows."""

    name: str
    title: str
    caption: str
    png: bytes
    half: bool = False  # shown side by side with the next half-width figure


# ---------------------------------------------------------------------------- data


def curve_rows(run: Path, history: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Learning-curve rows: ``logs/scalars.jsonl``, completed by the history file.

    Without a scalars file (TensorBoard off) the history gives the validation loss and mIoU
    (``Average/IoU``, which is ``val_miou``); when no row has a learning rate, the history's.
    """
    rows = read_scalars(run)
    epochs = sorted(history.items(), key=lambda item: int(item[0]))
    if not any(row.get("phase") == "val" for row in rows):
        rows += [
            {
                "phase": "val",
                "step": entry.get("step") or 0,
                "epoch": int(epoch),
                "loss": entry.get("loss"),
                "miou": entry.get("Average/IoU"),
            }
            for epoch, entry in epochs
        ]
    if not any("lr" in row for row in rows):
        rows += [
            {
                "phase": "train",
                "step": e.get("step") or 0,
                "epoch": int(k),
                "lr": e["learning rate"],
            }
            for k, e in epochs
            if e.get("learning rate") is not None
        ]
    return rows


def metrics_entry(run: Path) -> tuple[dict[str, Any] | None, str]:
    """The history entry the page scores (test, else the last validation), and what it is."""
    test = read_history(RunFolder(run).test_history)
    if test:
        epoch, entry = max(test.items(), key=lambda item: int(item[0]))
        checkpoint = entry.get("checkpoint")
        return entry, "test split" + (f", checkpoint {checkpoint}" if checkpoint else "")
    history = read_history(RunFolder(run).history)
    if history:
        epoch, entry = max(history.items(), key=lambda item: int(item[0]))
        # history.json keeps ODEON's 0-based epoch ids; a person reads epochs from 1
        return entry, f"validation split, epoch {int(epoch) + 1}"
    return None, "no history"


# ---------------------------------------------------------------------------- figures


def figure_png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def sample_tiles(run: Path, count: int, device: str = "auto") -> tuple[Figure, str]:
    """Image, mask and prediction of ``count`` tiles of the test split (else val).

    Raises LandsegError when the checkpoint or the data cannot be read.
    """
    from landseg.data.datamodule import CsvSegmentationDataModule
    from landseg.inference.scene import LoadedModel, Tiling, predict_array
    from landseg.planning.prepare import prepare

    checkpoint = RunFolder(run).best_checkpoint()
    if checkpoint is None:
        raise LandsegError(f"{run}: no checkpoint")
    model = LoadedModel.load(checkpoint, device)
    config = model.config
    split = "test" if config.data_source.test_file is not None else "val"
    # the devices it was trained on need not be here: the report predicts on its own device
    datamodule = CsvSegmentationDataModule(config, prepare(config, device_check=False).summary)
    dataset = getattr(datamodule, f"{split}_dataset")
    indices = np.unique(np.linspace(0, len(dataset) - 1, min(count, len(dataset))).astype(int))
    # the run's colours, as its class rasters, .qml and exports have them
    palette = rgb_palette(run_colors(config, model.n_classes))
    fig = new_figure(9.0, 3.0 * len(indices) + 0.6)
    axes = fig.subplots(len(indices), 3, squeeze=False)
    for row, index in zip(axes, indices, strict=True):
        sample = dataset[int(index)]
        image = sample["image"].numpy()
        prediction = predict_array(model, image, Tiling()).argmax(axis=0)
        name = Path(dataset.pairs[int(index)].image).name
        panels = (
            (display_image(image), name),
            (colorize(sample["mask"].numpy(), palette), "mask"),
            (colorize(prediction, palette), "prediction"),
        )
        for ax, (pixels, title) in zip(row, panels, strict=True):
            ax.imshow(pixels, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()
    handles = [
        Patch(color=palette[i] / 255, label=label) for i, label in enumerate(model.class_labels)
    ]
    handles.append(Patch(color="black", label="no label"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(6, len(handles)), fontsize=8)
    caption = f"{split} split, {len(indices)} of {len(dataset)} images; model {checkpoint.name}"
    return fig, caption


def report_sections(run: Path, samples: int, device: str) -> tuple[list[Section], list[str]]:
    """The page's figures, and a note for each that could not be drawn."""
    sections: list[Section] = []
    notes: list[str] = []
    history = read_history(RunFolder(run).history)
    rows = curve_rows(run, history)
    sections.append(
        Section(
            "learning_curves",
            "Learning curves",
            "Loss, mIoU and learning rate per epoch (train and validation).",
            figure_png(learning_curves(rows)),
        )
    )
    entry, source = metrics_entry(run)
    labels = entry_labels(entry) if entry else []
    if entry and entry.get("cm_macro") and labels:
        cm = np.asarray(entry["cm_macro"])
        for normalize, name, what in (
            (False, "confusion", "pixel counts"),
            (True, "confusion_normalized", "each row divided by its total (recall)"),
        ):
            sections.append(
                Section(
                    name,
                    "Confusion matrix" + (" (normalised)" if normalize else ""),
                    f"{source}: rows are true classes, columns predicted ones; {what}.",
                    figure_png(confusion_matrix_figure(cm, labels, normalize)),
                    half=True,
                )
            )
        sections.append(
            Section(
                "per_class",
                "Per-class scores",
                f"{source}: IoU and F1 per class; dashed lines are the macro averages.",
                figure_png(per_class_bars(entry, labels)),
            )
        )
    else:
        notes.append("No confusion matrix: the run has no history entry yet.")
    if samples > 0:
        try:
            fig, caption = sample_tiles(run, samples, device)
            sections.append(Section("samples", "Sample tiles", caption, figure_png(fig)))
        except LandsegError as error:
            notes.append(f"No sample tiles: {error.problems[0]}")
    return sections, notes


# ---------------------------------------------------------------------------- page

PAGE = Template(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>landseg report: $title</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #222; background: #fff; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
.path { color: #666; font-family: monospace; font-size: 0.85rem; }
.status { display: inline-block; padding: 0.1rem 0.6rem; border-radius: 0.8rem;
          color: #fff; font-size: 0.85rem; }
.finished { background: #2e7d32; } .running { background: #1565c0; }
.failed { background: #c62828; } .interrupted, .unknown { background: #ef6c00; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.9rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25rem 0.8rem; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: 600; }
.figures { display: flex; flex-wrap: wrap; gap: 0 1.5rem; }
.figures section { flex: 1 1 100%; } .figures section.half { flex: 1 1 45%; min-width: 380px; }
figure { margin: 0.5rem 0 1rem; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.85rem; }
.note { color: #8a6d3b; }
</style>
</head>
<body>
<h1>$title <span class="status $status">$status</span></h1>
<div class="path">$path</div>
<h2>Run</h2>
<table>$summary</table>
<h2>Scores ($source)</h2>
$metrics
$notes
<div class="figures">
$figures
</div>
<footer class="path">landseg report, $generated</footer>
<script>
// Marks the page once loaded: every image decoded or not (checked by the tests).
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.length > 0 && images.every(function (img) {
    return img.complete && img.naturalWidth > 0;
  });
  document.body.setAttribute("data-images", ok ? "ok" : "broken");
  document.body.setAttribute("data-image-count", String(images.length));
});
</script>
</body>
</html>
"""
)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value)) if value not in (None, "") else "–"


def _summary_rows(run: Path, state: RunState, status: str) -> str:
    train_csv = state.csv.get("train")
    best_checkpoint = RunFolder(run).best_checkpoint()
    rows: list[tuple[str, Any]] = [
        ("Model", state.model),
        ("Train CSV", Path(train_csv.path).name if train_csv else None),
        ("Status", status),
        ("Epochs", f"{state.epochs_done} of {state.epochs or '?'}"),
        ("Best val_loss", state.best.get("val_loss")),
        ("Best val_miou", state.best.get("val_miou")),
        ("Started", state.started),
        ("Ended", state.ended),
        ("Best checkpoint", best_checkpoint.name if best_checkpoint else None),
    ]
    if state.archived is not None:
        rows.append(("Archived", f"from {state.archived.source} on {state.archived.date}"))
    if state.error:
        rows.append(("Error", state.error))
    return "\n".join(f"<tr><th>{k}</th><td>{_format(v)}</td></tr>" for k, v in rows)


def _metrics_table(entry: Mapping[str, Any] | None) -> str:
    if not entry:
        return '<p class="note">No scores recorded yet.</p>'
    head = "".join(f"<th>{m}</th>" for m in TABLE_METRICS)
    body = []
    for label in [*entry_labels(entry), "Average", "Overall"]:
        cells = "".join(
            f'<td class="num">{_format(entry.get(f"{label}/{m}"))}</td>' for m in TABLE_METRICS
        )
        kind = ' class="total"' if label in ("Average", "Overall") else ""
        body.append(f"<tr{kind}><td>{html.escape(label)}</td>{cells}</tr>")
    return f"<table><tr><th>class</th>{head}</tr>{''.join(body)}</table>"


def _figure_html(section: Section) -> str:
    data = base64.b64encode(section.png).decode("ascii")
    kind = ' class="half"' if section.half else ""
    return (
        f"<section{kind}><h2>{html.escape(section.title)}</h2>\n<figure>"
        f'<img src="data:image/png;base64,{data}" alt="{html.escape(section.title)}">'
        f"<figcaption>{html.escape(section.caption)}</figcaption></figure></section>"
    )


def render_page(run: Path, sections: list[Section], notes: list[str]) -> str:
    state = RunFolder(run).state()
    status = effective_status(state)
    entry, source = metrics_entry(run)
    title = f"{run.parent.name}/{run.name}"
    return PAGE.substitute(
        title=html.escape(title),
        status=html.escape(status),
        path=html.escape(str(run.absolute())),
        summary=_summary_rows(run, state, status),
        source=html.escape(source),
        metrics=_metrics_table(entry),
        notes="".join(f'<p class="note">{html.escape(n)}</p>' for n in notes),
        figures="\n".join(_figure_html(s) for s in sections),
        generated=html.escape(now_iso()),
    )


def write_report(run: Path, samples: int = 6, device: str = "auto") -> Path:
    """Write ``RUN/report/index.html`` and its PNG figures; returns the page's path."""
    run = Path(run)
    folder = RunFolder(run)
    if not folder.is_run:
        raise LandsegError(f"{run}: not a run folder (no {RunFolder.RUN_FILE})")
    sections, notes = report_sections(run, samples, device)
    out = folder.report
    for section in sections:
        atomic_write_bytes(out / f"{section.name}.png", section.png)
    page = out / REPORT_FILE
    atomic_write_text(page, render_page(run, sections, notes))
    return page
