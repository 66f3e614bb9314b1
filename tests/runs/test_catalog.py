"""``landseg runs`` and ``landseg archive`` on hand-made run folders (both layouts)."""

from __future__ import annotations

import datetime as dt
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from landseg.cli.main import main
from landseg.core.errors import LandsegError
from landseg.core.processes import process_start
from landseg.runs.catalog import (
    archive_run,
    best_checkpoint,
    effective_status,
    list_runs,
    resolve_checkpoint,
    resolve_run,
)
from landseg.runs.folder import RunState

TODAY = dt.date(2026, 11, 22)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def make_run(
    path: Path,
    *,
    status: str = "finished",
    checkpoints: tuple[str, ...] = ("m-loss-epoch=001-val_loss=0.5000.ckpt", "m-last.ckpt"),
    layout: str = "odeon",
    **state: object,
) -> Path:
    path.mkdir(parents=True)
    run_state = {
        "status": status,
        "started": "2026-11-20T10:00:00+00:00",
        "pid": 1,
        "host": "elsewhere",
        "model": "lightunet",
        "epochs": 3,
        "epochs_done": 3,
        "csv": {"train": {"path": "/data/zone_train.csv", "sha256": "x"}},
        "best": {"val_loss": 0.5, "val_miou": 0.75},
        **state,
    }
    (path / "run.json").write_text(json.dumps(run_state))
    (path / "config.json").write_text(json.dumps({"output_setup": {"layout": layout}}))
    (path / "checkpoints").mkdir()
    for name in checkpoints:
        (path / "checkpoints" / name).write_bytes(b"x" * 100)
    return path


@pytest.fixture
def output(tmp_path: Path) -> Path:
    """Runs of both layouts in one output folder."""
    out = tmp_path / "out"
    make_run(out / "exp" / "v1")
    make_run(out / "exp" / "v2", status="failed", epochs_done=1, best={})
    make_run(out / "exp" / "v3", status="running", host=socket.gethostname(), pid=dead_pid())
    make_run(out / "csv" / "lightunet" / "v1", layout="datamodule_model")
    return out


def test_lists_runs_of_both_layouts(output: Path, capsys) -> None:
    runs = {(info.experiment, info.version): info for info in list_runs(output)}
    assert set(runs) == {("exp", "v1"), ("exp", "v2"), ("exp", "v3"), ("csv/lightunet", "v1")}
    v1 = runs["exp", "v1"]
    assert (v1.model, v1.data, v1.epochs_done, v1.epochs) == ("lightunet", "zone_train.csv", 3, 3)
    assert (v1.val_loss, v1.val_miou, v1.status) == (0.5, 0.75, "finished")
    assert v1.size >= 200
    assert runs["exp", "v2"].status == "failed" and runs["exp", "v2"].val_loss is None
    assert runs["exp", "v3"].status == "interrupted"  # says running, but its process is gone

    assert main(["runs", str(output), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {row["status"] for row in listed} == {"finished", "failed", "interrupted"}
    assert main(["runs", str(output)]) == 0
    table = capsys.readouterr().out
    assert "csv/lightunet" in table and "interrupted" in table and "zone_train.csv" in table


def test_status_of_a_live_or_foreign_process() -> None:
    import os

    here = socket.gethostname()
    assert effective_status(RunState(status="running", host=here, pid=os.getpid())) == "running"
    assert effective_status(RunState(status="running", host="other", pid=dead_pid())) == "running"
    assert effective_status(RunState.model_validate({})) == "unknown"


def test_a_reused_pid_is_not_the_run_s_process() -> None:
    import os

    here, pid = socket.gethostname(), os.getppid()  # a live process, started before this one
    running = {"status": "running", "host": here, "pid": pid}
    assert (
        effective_status(RunState.model_validate({**running, "process_start": process_start(pid)}))
        == "running"
    )
    # the same pid, but another process (a container restarted, the pid handed out again)
    assert (
        effective_status(RunState.model_validate({**running, "process_start": "other-boot:1"}))
        == "interrupted"
    )


def test_archive_renames_and_records(output: Path) -> None:
    target = archive_run(output / "exp" / "v1", today=TODAY)
    assert target == (output / "exp" / "archived_v1_2026-11-22").absolute()
    assert not (output / "exp" / "v1").exists()
    state = json.loads((target / "run.json").read_text())
    assert state["archived"] == {"from": "exp/v1", "date": "2026-11-22"}
    second = archive_run(output / "exp" / "v2", today=TODAY + dt.timedelta(days=1))
    assert second.name == "archived_v2_2026-11-23"
    index = json.loads((output / "archive.json").read_text())["archived"]
    assert [e["name"] for e in index] == ["archived_v1_2026-11-22", "archived_v2_2026-11-23"]
    assert index[0]["path"] == "exp/archived_v1_2026-11-22" and index[0]["best"]["val_miou"]

    # seed 003's layout: the output folder is three levels up; numbers count per folder
    other = archive_run(output / "csv" / "lightunet" / "v1", today=TODAY)
    assert other.name == "archived_v1_2026-11-22"
    assert json.loads((output / "archive.json").read_text())["archived"][-1]["path"] == (
        "csv/lightunet/archived_v1_2026-11-22"
    )
    listed = {info.version: info for info in list_runs(output) if info.experiment == "exp"}
    assert listed["archived_v1_2026-11-22"].archived == {"from": "exp/v1", "date": "2026-11-22"}


def test_archive_refusals(output: Path, tmp_path: Path) -> None:
    import os

    live = make_run(
        output / "exp" / "live", status="running", host=socket.gethostname(), pid=os.getpid()
    )
    with pytest.raises(LandsegError, match="still running"):
        archive_run(live)
    foreign = make_run(output / "exp" / "foreign", status="running", host="node-17", pid=4321)
    with pytest.raises(LandsegError) as refused:
        archive_run(foreign)
    assert refused.value.problems == [
        f"{foreign}: run.json says running (pid 4321 on host node-17), which cannot be checked "
        "from here; wait for it, or if that process is gone (a failed node), continue the run "
        "to its end (landseg train --resume) and archive it then"
    ]
    empty = make_run(output / "exp" / "empty", checkpoints=())
    with pytest.raises(LandsegError, match="no checkpoint"):
        archive_run(empty)
    archived = archive_run(output / "exp" / "v3", today=TODAY)  # interrupted: may be archived
    with pytest.raises(LandsegError, match="already archived"):
        archive_run(archived)
    with pytest.raises(LandsegError, match="not a run folder"):
        archive_run(tmp_path)
    assert main(["archive", str(live)]) == 2
    assert (output / "exp" / "live").is_dir()
    # a place archive.json cannot go: refused before the run is renamed (it was renamed,
    # then archive.json failed, and every later attempt said "already archived")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(LandsegError, match=r"not a folder, needed for archive\.json"):
        archive_run(output / "exp" / "v1", tmp_path / "a-file", today=TODAY)
    assert (output / "exp" / "v1" / "run.json").is_file()
    assert json.loads((output / "exp" / "v1" / "run.json").read_text()).get("archived") is None


def test_resolve_by_path_name_or_checkpoint(output: Path, monkeypatch) -> None:
    target = archive_run(output / "exp" / "v1", today=TODAY)
    assert resolve_run("archived_v1_2026-11-22", output) == target
    monkeypatch.chdir(output)
    assert resolve_run("archived_v1_2026-11-22").resolve() == target.resolve()
    assert resolve_run(target) == target
    best = resolve_checkpoint("archived_v1_2026-11-22", output)
    assert best.name == "m-loss-epoch=001-val_loss=0.5000.ckpt"
    assert resolve_checkpoint(best) == best
    make_run(output / "other" / "v2")
    with pytest.raises(LandsegError, match="several runs"):
        resolve_run("v2", output)
    with pytest.raises(LandsegError, match="no run of that name"):
        resolve_run("archived_v9_2026-01-01", output)
    run_json = target / "run.json"
    with pytest.raises(LandsegError) as refused:
        resolve_run(run_json)
    assert refused.value.problems == [
        f"{run_json}: is a file, not a run folder; its run folder is {target}"
    ]
    with pytest.raises(LandsegError) as refused:  # archived already, under another name
        resolve_run(output / "exp" / "v1")
    assert refused.value.problems == [f"{output / 'exp' / 'v1'}: was archived as {target}"]
    with pytest.raises(LandsegError, match="checkpoint not found"):
        resolve_checkpoint(output / "missing.ckpt")


def test_best_checkpoint_prefers_lowest_val_loss(tmp_path: Path) -> None:
    run = make_run(
        tmp_path / "r",
        checkpoints=(
            "m-loss-epoch=002-val_loss=0.4000.ckpt",
            "m-loss-epoch=005-val_loss=0.3000-v1.ckpt",
            "m-miou-epoch=001-val_miou=0.9000.ckpt",
            "m-last.ckpt",
        ),
    )
    assert best_checkpoint(run).name == "m-loss-epoch=005-val_loss=0.3000-v1.ckpt"
    only_last = make_run(tmp_path / "s", checkpoints=("m-last.ckpt",))
    assert best_checkpoint(only_last).name == "m-last.ckpt"


def test_a_killed_run_not_yet_waited_for_is_interrupted() -> None:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = process_start(process.pid)
        state = {"status": "running", "host": socket.gethostname(), "pid": process.pid}
        assert (
            effective_status(RunState.model_validate({**state, "process_start": started}))
            == "running"
        )
        process.kill()
        deadline = dt.datetime.now() + dt.timedelta(seconds=10)
        while process_start(process.pid) is not None and dt.datetime.now() < deadline:
            pass  # the kernel makes it a zombie: its pid still answers kill(pid, 0)
        assert (
            effective_status(RunState.model_validate({**state, "process_start": started}))
            == "interrupted"
        )
    finally:
        process.kill()
        process.wait()


def test_archived_names_qualified_by_their_experiment(output: Path, monkeypatch, capsys) -> None:
    """Two experiments archived the same day both get archived_v1_<date>: EXP/NAME tells."""
    make_run(output / "other" / "v1")
    first = archive_run(output / "exp" / "v1", today=TODAY)
    second = archive_run(output / "other" / "v1", today=TODAY)
    assert first.name == second.name == "archived_v1_2026-11-22"

    with pytest.raises(LandsegError) as error:
        resolve_run("archived_v1_2026-11-22", output)
    message = str(error.value)
    assert "several runs" in message and "qualify it as EXP/NAME" in message
    assert "exp/archived_v1_2026-11-22" in message and "other/archived_v1_2026-11-22" in message

    assert resolve_run("exp/archived_v1_2026-11-22", output) == first
    assert resolve_run("other/archived_v1_2026-11-22", output) == second
    best = resolve_checkpoint("other/archived_v1_2026-11-22", output)
    assert best.parent.parent == second
    # the datamodule_model layout: the full relative path or its tail
    layout = output / "csv" / "lightunet" / "v1"
    assert resolve_run("csv/lightunet/v1", output) == layout
    assert resolve_run("lightunet/v1", output) == layout
    with pytest.raises(LandsegError, match="no run of that name"):
        resolve_run("nope/archived_v1_2026-11-22", output)
    with pytest.raises(LandsegError, match="no such run folder"):
        resolve_run("../out/exp/v2", output)

    monkeypatch.chdir(output.parent)  # not the output folder: the name is searched there
    capsys.readouterr()
    assert main(["archive", "exp/v2", "--output-folder", str(output)]) == 0
    assert "archived_v2_" in capsys.readouterr().out


def test_a_damaged_run_json_is_named_and_a_file_is_no_output_folder(
    output: Path, caplog: pytest.LogCaptureFixture, capsys
) -> None:
    damaged = output / "exp" / "v2" / "run.json"
    damaged.write_text('{"status": "fini')
    with caplog.at_level("WARNING", logger="landseg.runs.catalog"):
        runs = {info.version: info.status for info in list_runs(output / "exp")}
    assert runs["v2"] == "unknown"
    assert caplog.messages == [f"{damaged}: unreadable (damaged?); the run is shown as unknown"]
    capsys.readouterr()
    assert main(["runs", str(damaged)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {damaged}: is a file, not an output folder"
