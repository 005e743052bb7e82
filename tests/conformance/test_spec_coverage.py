"""SPEC.md and the cases agree: quotes are verbatim, every MUST section has a case."""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance._coverage import fold, misquoted, must_sentences, uncovered_sections

from ._support import all_cases

SPEC = Path(__file__).resolve().parents[2] / "SPEC.md"

pytestmark = pytest.mark.skipif(not SPEC.exists(), reason="SPEC.md not written yet")


def _spec() -> str:
    return SPEC.read_text(encoding="utf-8")


def test_every_section_with_a_must_has_a_case() -> None:
    assert uncovered_sections(_spec(), all_cases()) == {}


def test_requirements_are_verbatim_spec_text() -> None:
    assert misquoted(_spec(), all_cases()) == {}


def test_the_parser_finds_the_musts() -> None:
    found = must_sentences(_spec())
    sections = {m.section for m in found}
    assert {"6.6", "7.2", "8.2", "10.4"} <= sections
    assert all("MUST" in m.text for m in found)
    assert all(3 <= int(m.section.split(".")[0]) <= 10 for m in found)


SAMPLE = """\
# Title

## 2. Overview

Nothing MUST be checked here.

## 3. Things

3.1. A peer MUST do one thing. It SHOULD do
another; it MUST NOT do a third.

| a | b |
|---|---|
| MUST | in a table |

3.2. No requirement here.

## 11. Late

11.1. Out of range MUST be ignored.
"""


def test_parser_on_a_sample() -> None:
    found = must_sentences(SAMPLE)
    assert [(m.section, m.text) for m in found] == [
        ("3.1", "A peer MUST do one thing."),
        ("3.1", "It SHOULD do another; it MUST NOT do a third."),
    ]
    assert fold(" a \n  b\tc ") == "a b c"
