"""The named choices are listed once (landseg.config.choices): the config's literals, the
parser's choices, docs/configuration.md and the implementations all follow that list."""

from __future__ import annotations

import argparse
import typing
from pathlib import Path

import pytest

from landseg.cli.main import build_parser, main
from landseg.config.choices import (
    GROUP_SOURCES,
    OUTPUT_TYPES,
    class_map_types,
    describe_formats,
    formats_for,
    predicting_formats,
)
from landseg.config.cross_validation import CrossValidation
from landseg.config.schema import OutputSetup
from landseg.core.registry import Registry, check_implements

DOCS = Path(__file__).parents[2] / "docs" / "configuration.md"


def option(command: str, flag: str) -> argparse.Action:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return next(a for a in sub.choices[command]._actions if flag in a.option_strings)


def test_output_types_come_from_one_list() -> None:
    from landseg.inference.scene import OUTPUT_WRITERS

    names = OUTPUT_TYPES.names()
    field = OutputSetup.model_fields["prediction_output_type"]
    assert typing.get_args(field.annotation) == tuple(names)
    assert option("predict", "--type").choices == names
    assert OUTPUT_WRITERS.names() == names
    assert class_map_types() == ["classes"]
    docs = DOCS.read_text()
    for name in names:  # every meaning, in the config reference and the parser's help
        assert f"{name}: {OUTPUT_TYPES.get(name)}" in docs
        assert OUTPUT_TYPES.get(name) in option("predict", "--type").help


def test_export_formats_come_from_one_list(capsys) -> None:
    from landseg.inference.portable import LOADERS
    from landseg.models.export import CHECKPOINT_WRITERS, PORTABLE_WRITERS, export_problems

    assert formats_for("checkpoint") == CHECKPOINT_WRITERS.names() == ["pth", "torchscript"]
    portable = ["encoder", "onnx", "torchscript"]
    assert formats_for("portable") == PORTABLE_WRITERS.names() == portable
    assert LOADERS.names() == predicting_formats() == ["onnx", "torchscript"]  # not an encoder
    assert option("export", "--format").choices == formats_for("portable")
    (line,) = export_problems("onnx")
    assert line.startswith("train_setup.export_checkpoint: unknown export format 'onnx'")
    assert line.endswith("valid: pth, torchscript")
    docs = DOCS.read_text()
    assert describe_formats("checkpoint") in docs
    assert describe_formats("portable") in option("export", "--format").help
    with pytest.raises(SystemExit):
        main(["export", "run", "--format", "pth"])
    assert "invalid choice: 'pth'" in capsys.readouterr().err


def test_group_sources_come_from_one_list() -> None:
    from landseg.jobs.plan import GROUP_READERS

    assert GROUP_READERS.names() == GROUP_SOURCES.names()
    assert set(GROUP_SOURCES) <= set(CrossValidation.model_fields)
    with pytest.raises(ValueError) as error:
        CrossValidation(group_column="zone", group_pattern="(z)")
    for name in GROUP_SOURCES:
        assert f"{name} ({GROUP_SOURCES.get(name)})" in str(error.value)
    assert CrossValidation(group_pattern="(z)").group_source == "group_pattern"


def test_an_implementation_that_does_not_match_its_names_is_refused() -> None:
    writers: Registry[object] = Registry("prediction output type")
    for name in ["bit", "classes", "float32", "webp"]:
        writers.add(name, object())
    with pytest.raises(RuntimeError, match=r"missing \['uint8'\], not listed \['webp'\]"):
        check_implements(OUTPUT_TYPES, writers)
