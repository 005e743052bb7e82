"""petal-conformance: checks an implementation at HOST:PORT against SPEC.md.

Modelled on h2spec (cases named by spec section, a fresh connection per case, expected-
outcome sets) and the Autobahn test suite (verdicts, JSON reports with a wirelog).
"""

from __future__ import annotations

from ._harness import (
    REGISTRY,
    Case,
    CaseContext,
    Level,
    Options,
    Outcome,
    Result,
    Verdict,
    case,
    count,
    run_cases,
)
from .cases import load_cases

__all__ = [
    "REGISTRY",
    "Case",
    "CaseContext",
    "Level",
    "Options",
    "Outcome",
    "Result",
    "Verdict",
    "case",
    "count",
    "load_cases",
    "run_cases",
]
