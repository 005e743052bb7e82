"""The directory tree draws the I/O boundary (STYLE.md §1): the core is sans-IO."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / "petalproto" / "core"
#: What petalproto/core must never import: I/O, clocks, randomness, concurrency, torch.
FORBIDDEN = frozenset({"trio", "socket", "time", "random", "asyncio", "threading", "torch"})


def _imported(node: ast.AST) -> list[str]:
    """The absolute module names an ``import`` statement names ([] for any other node)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module]
    return []


def forbidden_imports(source: str) -> list[str]:
    """The forbidden top-level modules that ``source`` imports, however it spells it."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names = _imported(node)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Name, ast.Attribute))
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
            in ("__import__", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        found += [name for name in names if name.partition(".")[0] in FORBIDDEN]
    return found


def _core_files() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_core_files_are_found() -> None:
    names = {path.relative_to(CORE).as_posix() for path in _core_files()}
    assert {"__init__.py", "_connection.py", "_mux.py"} <= names
    assert any(name.startswith("dht/") for name in names)


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: p.relative_to(CORE).as_posix())
def test_core_module_is_sans_io(path: Path) -> None:
    assert forbidden_imports(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    "source",
    [
        "import time",
        "import os, trio.lowlevel",
        "from random import randbytes",
        "from asyncio import sleep",
        "def f():\n    import socket",
        "import importlib\nimportlib.import_module('threading')",
        "__import__('torch')",
    ],
)
def test_the_check_catches_every_spelling(source: str) -> None:
    assert forbidden_imports(source)


@pytest.mark.parametrize(
    "source",
    [
        "import os, hashlib",
        "from . import time",  # a sibling module that happens to share a name
        "from .random import x",
        "import timeit",
        "from typing import TYPE_CHECKING",
    ],
)
def test_the_check_allows_the_rest(source: str) -> None:
    assert forbidden_imports(source) == []


# Imports point down only (STYLE.md §1): petalproto never names the packages above it. -----

PETALPROTO = CORE.parent
#: The packages that use petalproto, which petalproto must not name.
ABOVE = ("reference_peer", "conformance")


def names_above(source: str) -> list[str]:
    """Imports of, and string constants naming, a package above petalproto (a module path
    handed to ``import_module`` through a variable is a string too)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names = _imported(node)
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value]
        found += [name for name in names if name.partition(".")[0] in ABOVE]
    return found


@pytest.mark.parametrize(
    "path",
    sorted(PETALPROTO.rglob("*.py")),
    ids=lambda p: p.relative_to(PETALPROTO).as_posix(),
)
def test_petalproto_never_names_a_package_above_it(path: Path) -> None:
    assert names_above(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    "source",
    [
        "import reference_peer",
        "from reference_peer._cli import chat_main",
        "def f():\n    from conformance import runner",
        "MODULE = 'reference_peer._bench_swarm'",
    ],
)
def test_the_upward_check_catches_every_spelling(source: str) -> None:
    assert names_above(source)


def test_the_upward_check_allows_the_rest() -> None:
    assert names_above("from . import cli\nimport petalproto.net\nX = 'reference peer'") == []
