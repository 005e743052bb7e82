"""Which SPEC.md requirements the cases check.

Two rules keep the suite honest: every requirement a case quotes is verbatim SPEC.md text
(modulo line wrapping), and every section from 3 to 10 that states a MUST has at least one
case whose id starts with that section number.  ``tools`` and tests call these functions;
they read SPEC.md as text and import nothing but the registry.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ._harness import QUOTE_GAP, Case

__all__ = ["MustSentence", "fold", "misquoted", "must_sentences", "uncovered_sections"]

_TOP = re.compile(r"^##\s+(\d+)\.\s")
_SUB = re.compile(r"^(\d+\.\d+)\.\s")
_SENTENCE_END = re.compile(r"(?<=[.;:])\s+(?=[A-Z(`-])")


def fold(text: str) -> str:
    """Whitespace runs folded to single spaces: the form quotes are compared in."""
    return " ".join(text.split())


@dataclass(frozen=True, slots=True)
class MustSentence:
    section: str
    text: str


def _sections(spec: str) -> dict[str, list[str]]:
    """Lines of SPEC.md grouped by the section (``6`` or ``6.3``) they belong to."""
    out: dict[str, list[str]] = {}
    current = ""
    for line in spec.splitlines():
        if top := _TOP.match(line):
            current = top.group(1)
        elif line.startswith("#"):
            current = ""
        elif sub := _SUB.match(line):
            current = sub.group(1)
        if current:
            out.setdefault(current, []).append(line)
    return out


def _paragraphs(lines: list[str]) -> list[str]:
    """Prose paragraphs, folded; blank lines, headings and table rows separate them."""
    out: list[str] = []
    current: list[str] = []
    for line in lines:
        stripped = line.strip()
        if not stripped or stripped.startswith(("|", "#", "```")):
            if current:
                out.append(fold(" ".join(current)))
            current = []
        else:
            current.append(stripped)
    if current:
        out.append(fold(" ".join(current)))
    return out


def must_sentences(spec: str, first: int = 3, last: int = 10) -> list[MustSentence]:
    """The sentences stating a MUST (or MUST NOT) in sections ``first``..``last``."""
    found: list[MustSentence] = []
    for section, lines in _sections(spec).items():
        if not first <= int(section.split(".")[0]) <= last:
            continue
        for paragraph in _paragraphs(lines):
            for sentence in _SENTENCE_END.split(paragraph):
                if re.search(r"\bMUST\b", sentence):
                    found.append(MustSentence(section, sentence))
    return found


def uncovered_sections(spec: str, cases: Iterable[Case]) -> dict[str, list[str]]:
    """Sections with a MUST but no case of that section id: section -> its MUSTs."""
    have = {c.section for c in cases}
    missing: dict[str, list[str]] = {}
    for must in must_sentences(spec):
        if must.section not in have:
            missing.setdefault(must.section, []).append(must.text)
    return missing


def misquoted(spec: str, cases: Iterable[Case]) -> dict[str, list[str]]:
    """Cases whose requirement is not verbatim SPEC.md text: case id -> the bad pieces."""
    text = fold(spec)
    bad: dict[str, list[str]] = {}
    for c in cases:
        pieces = [p for p in c.requirement.split(QUOTE_GAP) if fold(p) not in text]
        if pieces:
            bad[c.id] = pieces
    return bad
