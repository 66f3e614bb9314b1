"""The ``cross_validation`` config section (``landseg cv``).

This module imports only pydantic, the standard library and :mod:`landseg.config.choices`
(which says where groups may come from), because :mod:`landseg.config.schema` imports it to
add the optional section to the root config.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from landseg.config.choices import GROUP_SOURCES

GroupName = Annotated[str, Field(min_length=1)]


class SpatialBlocks(BaseModel):
    """Groups from the tiles' georeferencing: square blocks of the map, each tile in the block
    that holds its centre (see cross_validation.md, Spatial blocks)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    size: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Side of the square blocks in map units (metres for a projected CRS); "
        "the grid is anchored at multiples of size in the CRS, so block names do not change "
        "when tiles are added. Set this or number.",
    )
    number: int | None = Field(
        default=None,
        ge=2,
        description="About how many blocks cover the bounding box of the tile centres: the "
        "block size is max(sqrt(W * H / number), max(W, H) / number) for a box of W x H map "
        "units.",
    )
    buffer: float = Field(
        default=0.0,
        ge=0,
        allow_inf_nan=False,
        description="Map units: in each task, training and validation tiles whose footprint "
        "lies closer than this to a footprint of a test tile are left out (0: none; any "
        "buffer > 0 leaves out the tiles that touch a test tile).",
    )

    @model_validator(mode="after")
    def _size_or_number(self) -> SpatialBlocks:
        if (self.size is None) == (self.number is None):
            raise ValueError(
                "set exactly one of size (the side of a block in map units) and number "
                "(about how many blocks)"
            )
        return self


class CrossValidation(BaseModel):
    """`landseg cv` (see cross_validation.md): each test subject is held out in turn."""

    # A group is a set of tiles (a zone); a test subject is one group, or several groups held
    # out together ("subject pairs"). The rows come from one CSV file;
    # data_source.val_file and test_file are not used.

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    file: Path | None = Field(
        default=None,
        description="CSV of every row of the job, with a header when group_column is used; "
        "default data_source.train_file. Relative to the config file's folder.",
    )
    group_column: str | None = Field(
        default=None,
        description="Column of the CSV that names each row's group (e.g. zone). Set exactly "
        f"one of {', '.join(GROUP_SOURCES.names())}.",
    )
    group_pattern: str | None = Field(
        default=None,
        description="Regular expression with one capture group, searched in each row's image "
        "path; the captured text is the row's group (e.g. (zone\\d+)_).",
    )
    spatial_blocks: SpatialBlocks | None = Field(
        default=None,
        description="Groups made from the tiles' georeferencing: {size: map units} or "
        "{number: blocks}, and an optional buffer (map units) between each task's test tiles "
        "and its training and validation tiles. Every tile needs a CRS.",
    )
    folds: int | None = Field(
        default=None,
        ge=2,
        description="Join the groups (blocks or zones) into this many folds, fold1..foldN, "
        "balanced by tile count; the folds are then the job's groups (groups, test_groups "
        "and validation name folds). Default: every group is its own.",
    )
    groups: list[GroupName] | None = Field(
        default=None,
        min_length=2,
        description="Restrict the job to the rows of these groups; default every group.",
    )
    test_groups: list[GroupName | list[GroupName]] | None = Field(
        default=None,
        min_length=1,
        description="Test subjects, held out in turn: a group name, or a list of groups held "
        "out together (subject pairs). Default: every group alone.",
    )
    validation: Literal["rotations"] | Annotated[int, Field(ge=0)] = Field(
        default="rotations",
        description="rotations: each remaining group takes its turn as validation set (one "
        "task per rotation); N: one task per test subject, validated on the N groups that "
        "follow it (in sorted order, wrapping round); 0: on data_source.percentage_val of the "
        "training rows.",
    )
    checkpoint_every_n_epochs: int = Field(
        default=1,
        ge=1,
        description="Each task saves TASK_ID-epoch=NNN.ckpt every N epochs and after its "
        "last epoch.",
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads of each task (per DDP process), however the job is launched "
        "(sequential, --workers, mpiexec, a resume under another launch): float sums follow "
        "the thread count, so a job's results depend on it. Default: the CPUs the process "
        "that first starts the job may run on, divided among a task's DDP processes. "
        "Recorded in job.sqlite by the job's first launch and kept by every later one.",
    )

    @field_validator("group_pattern")
    @classmethod
    def _one_capture_group(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            compiled = re.compile(value)
        except re.error as error:
            raise ValueError(f"not a valid regular expression ({error})") from error
        if compiled.groups != 1:
            raise ValueError(
                f"needs exactly one capture group (...) for the group name, has {compiled.groups}"
            )
        return value

    @field_validator("test_groups")
    @classmethod
    def _no_empty_subject(cls, value: list[str | list[str]] | None) -> list[str | list[str]] | None:
        for item in value or []:
            if isinstance(item, list) and not item:
                raise ValueError("a test subject given as a list needs at least one group")
        return value

    @model_validator(mode="after")
    def _one_group_source(self) -> CrossValidation:
        sources = [name for name in GROUP_SOURCES.names() if getattr(self, name) is not None]
        if len(sources) != 1:
            choices = [f"{name} ({GROUP_SOURCES.get(name)})" for name in GROUP_SOURCES.names()]
            raise ValueError(f"set exactly one of {', '.join(choices)}")
        return self

    @property
    def group_source(self) -> str:
        """The key the groups come from (a name of :data:`GROUP_SOURCES`): the one that is set."""
        return next(name for name in GROUP_SOURCES.names() if getattr(self, name) is not None)

    def subjects(self) -> list[tuple[str, ...]] | None:
        """The configured test subjects as tuples of group names (None: every group)."""
        if self.test_groups is None:
            return None
        return [(item,) if isinstance(item, str) else tuple(item) for item in self.test_groups]
