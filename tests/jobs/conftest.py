"""Cross-validation job configs on the generated demo data (3 zones of 8 tiles)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import cv_config


@pytest.fixture
def make_cv_config(demo_dir: Path, tmp_path: Path):
    def make(**cross_validation: Any) -> dict[str, Any]:
        return cv_config(demo_dir, tmp_path / "runs", **cross_validation)

    return make
