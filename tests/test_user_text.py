"""What a user reads names what a user knows: never the numbers of the documents landseg was
specified from ("004", "seed 003"), never a developer's Sphinx role in the config reference."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers import REPO

#: A document number: "seed 003", "(004)", "004's", "ODEON 004". Checkpoint epochs
#: (``epoch=003``), trial folders (``trial-003``) and numbers like 0.004 are not.
SPEC_NUMBER = re.compile(r"(?i:seed\s+)00[0-4]\b|(?<![\w=.\-])(?<!\d )00[0-4](?![\w.\-])")


def user_text_files() -> list[Path]:
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    files += sorted((REPO / "src" / "landseg").rglob("*.py"))
    files += sorted((REPO / "examples").rglob("*.*"))
    return [f for f in files if f.is_file()]


def spec_numbers(text: str) -> list[str]:
    return [m.group(0) for m in SPEC_NUMBER.finditer(text)]


def test_no_document_number_reaches_a_user() -> None:
    found = {
        str(f.relative_to(REPO)): spec_numbers(f.read_text(encoding="utf-8"))
        for f in user_text_files()
    }
    assert {name: hits for name, hits in found.items() if hits} == {}


def test_the_number_pattern_finds_what_it_must_and_spares_the_rest() -> None:
    planted = "seed 003's layout; (004); 004's keys; ODEON 004, section X; Seed 000"
    assert spec_numbers(planted) == ["seed 003", "004", "004", "004", "Seed 000"]
    assert spec_numbers("epoch=003 trial-003 0.004 1004 x004 2004-01-01 50 000") == []


def test_the_config_reference_shows_user_descriptions_only() -> None:
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert re.findall(r":(?:meth|class|func|mod|attr):`", text) == []
