"""The conformance cases, one module per family of SPEC.md sections.

Every module in this package is imported by ``load_cases``; its ``@case(...)`` functions
register themselves.  A new family (the DHT of §12, inference of §13) is a new module here
and nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil

from .._harness import REGISTRY, Registry

__all__ = ["load_cases"]


def load_cases() -> Registry:
    """Import every case module of this package; returns the filled registry."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    return REGISTRY
