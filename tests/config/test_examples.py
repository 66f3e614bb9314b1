"""The configs of ``examples/`` run as they are, on the demo dataset, on any machine: the
paths they name exist once ``landseg demo-data demo`` has run, and none asks for a GPU."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from landseg.cli.main import main
from landseg.data.demo import write_demo_dataset
from tests.helpers import REPO

EXAMPLES = sorted(p.name for p in (REPO / "examples").iterdir() if p.suffix in {".json", ".yaml"})


def test_there_are_examples_and_the_readme_names_each() -> None:
    readme = (REPO / "examples" / "README.md").read_text(encoding="utf-8")
    assert EXAMPLES == ["cv.yaml", "train.json", "tune.yaml"]
    assert [name for name in EXAMPLES if f"examples/{name}" not in readme] == []


@pytest.mark.parametrize("name", EXAMPLES)
def test_an_example_validates_beside_the_demo_data(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The repository's layout, rebuilt in tmp_path: examples/ beside demo/."""
    write_demo_dataset(tmp_path / "demo")
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    code = main(["validate", "-c", str(tmp_path / "examples" / name)])
    out = capsys.readouterr()
    assert (code, out.err) == (0, ""), out.err
    assert f"{name}: valid" in out.out


@pytest.mark.parametrize("name", EXAMPLES)
def test_an_example_without_the_demo_data_names_the_missing_file(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    assert main(["validate", "-c", str(tmp_path / "examples" / name)]) == 2
    assert str(tmp_path / "demo") in capsys.readouterr().err
