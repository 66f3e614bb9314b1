"""The ``cross_validation`` config section (``landseg cv``).

This module imports only pydantic and the standard library, because
:mod:`landseg.config.schema` imports it to add the optional section to the root config.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

GroupName = Annotated[str, Field(min_length=1)]


class CrossValidation(BaseModel):
    """`landseg cv` (see cross_validation.md): each test subject is held out in turn."""

    # A group is a set of tiles (a zone); a test subject is one group, or several groups held
    # out together (seed 000's "subject pairs"). The rows come from one CSV file;
    # data_source.val_file and test_file are not used.

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    file: Path | None = Field(
        default=None,
        description="CSV of every row of the job, with a header when group_column is used; "
        "default data_source.train_file. Relative to the config file's folder.",
    )
    group_column: str | None = Field(
        default=None,
        description="Column of the CSV that names each row's group (e.g. zone). Set this or "
        "group_pattern.",
    )
    group_pattern: str | None = Field(
        default=None,
        description="Regular expression with one capture group, searched in each row's image "
        "path; the captured text is the row's group (e.g. (zone\\d+)_).",
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
        if (self.group_column is None) == (self.group_pattern is None):
            raise ValueError(
                "set exactly one of group_column (a CSV column such as zone) and "
                "group_pattern (a regular expression on the image path)"
            )
        return self

    def subjects(self) -> list[tuple[str, ...]] | None:
        """The configured test subjects as tuples of group names (None: every group)."""
        if self.test_groups is None:
            return None
        return [(item,) if isinstance(item, str) else tuple(item) for item in self.test_groups]
