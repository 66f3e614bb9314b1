"""The ``search`` config section (``landseg tune``): settings searched inside cross-validation.

Each trial is a ``landseg cv`` job of its own, trained with the base config plus one value per
searched setting. This module imports only pydantic and the standard library, because
:mod:`landseg.config.schema` imports it to add the optional section to the root config.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Sections whose settings decide where a job writes or what a trial is, not what it learns.
NOT_SEARCHABLE = ("output_setup", "cross_validation", "search")

Choice = str | int | float | bool | None


class SearchParam(BaseModel):
    """One searched setting: a float or int range, or a list of choices."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    float_range: tuple[float, float] | None = Field(
        default=None,
        alias="float",
        description="[low, high]: a float drawn between the two (both included).",
    )
    int_range: tuple[int, int] | None = Field(
        default=None,
        alias="int",
        description="[low, high]: an integer between the two (both included).",
    )
    choice: Annotated[list[Choice], Field(min_length=1)] | None = Field(
        default=None,
        description="The values to choose from (strings, numbers, booleans).",
    )
    log: bool = Field(
        default=False,
        description="Draw float or int values on a log scale (low must be above 0).",
    )
    step: float | None = Field(
        default=None,
        gt=0,
        description="Spacing of the values of a float or int range (not with log).",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> SearchParam:
        kinds = [k for k in ("float_range", "int_range", "choice") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                "give exactly one of float: [low, high], int: [low, high], choice: [...]"
            )
        bounds = self.float_range or self.int_range
        if bounds is not None:
            low, high = bounds
            if not (math.isfinite(low) and math.isfinite(high)) or low > high:
                raise ValueError(f"[{low}, {high}]: low must not be above high")
            if self.log and low <= 0:
                raise ValueError(f"log: needs low above 0, got {low}")
            if self.log and self.step is not None:
                raise ValueError("log and step cannot be used together")
        elif self.log or self.step is not None:
            raise ValueError("log and step apply to float and int ranges, not to choice")
        if self.choice is not None and len({repr(v) for v in self.choice}) != len(self.choice):
            raise ValueError("choice: a value is given twice")
        return self

    def kind(self) -> Literal["float", "int", "choice"]:
        if self.float_range is not None:
            return "float"
        return "int" if self.int_range is not None else "choice"

    def extremes(self) -> list[Any]:
        """The values that bound what trials may set: both ends of a range, every choice."""
        bounds = self.float_range or self.int_range
        return list(bounds) if bounds is not None else list(self.choice or [])


class Search(BaseModel):
    """`landseg tune` (see tuning.md): which settings to search, how many trials, on what."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    params: dict[str, SearchParam] = Field(
        min_length=1,
        description="Setting (dotted key, e.g. train_setup.lr) -> {float: [low, high], log: "
        "true} | {int: [low, high]} | {choice: [a, b]}.",
    )
    trials: int = Field(
        ge=1,
        description="How many trials (cv jobs) the search runs; raise it and run again to "
        "continue a finished search.",
    )
    objective: Literal["val_miou", "val_loss"] = Field(
        default="val_miou",
        description="What a trial is scored on: the mean over its tasks of this validation "
        "metric at each task's best-val_loss checkpoint (never a test score). val_miou is "
        "maximised, val_loss minimised.",
    )
    sampler: Literal["tpe", "random"] = Field(
        default="tpe",
        description="Optuna's sampler, seeded with train_setup.random_seed + the trial number "
        "before each trial.",
    )

    @field_validator("params")
    @classmethod
    def _settings_only(cls, value: dict[str, SearchParam]) -> dict[str, SearchParam]:
        for key in value:
            parts = key.split(".")
            if len(parts) < 2 or not all(parts):
                raise ValueError(f"{key}: give a dotted key such as train_setup.lr")
            if parts[0] in NOT_SEARCHABLE:
                raise ValueError(
                    f"{key}: {parts[0]} says where a job writes or what a trial is; "
                    "it cannot be searched"
                )
        return value

    def direction(self) -> Literal["maximize", "minimize"]:
        return "maximize" if self.objective == "val_miou" else "minimize"
