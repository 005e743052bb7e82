"""The ``petal`` command: one entry point, a subcommand per job.

petalproto's own subcommands live in ``petalproto._commands``; a package above it (the
reference peer's ``serve``, ``generate``, ``chat``, ``demo``) registers its own in the
entry-point group ``petal.commands``, so this library never names what sits above it.
Command modules import torch only when they run, so ``petal dht`` never pays for it.

A mistake on the command line ends in one line on stderr, ``petal CMD: error: WHAT (HOW
TO FIX)``, never in a traceback (see ``_commands/_common.py``); ``-v`` adds the traceback of
an unexpected failure.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any, NoReturn

from ._commands._common import CommandError, root_cause

__all__ = ["main"]

#: The entry-point group where packages above petalproto register their subcommands
#: (``NAME = "package.module"``), as pytest plugins and flake8 checkers are registered.
GROUP = "petal.commands"

#: The subcommands of petalproto itself: name -> module.
_OWN = {
    name: f"petalproto._commands.{name}" for name in ("bench", "dht", "keygen", "ping", "status")
}


def commands() -> dict[str, str]:
    """Every subcommand, name -> module: ours, then those of the ``petal.commands`` group.

    A command module has ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args)``
    returning the exit status; its top level must import quickly (no torch), since
    building the parser imports every command module.
    """
    found = dict(_OWN)
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep.value)
    return dict(sorted(found.items()))


EPILOG = """\
exit status: 0 success; 1 the command failed while running (a port in use, an initial
peer that does not answer or is another peer than its address says, a swarm error);
2 the command line is wrong (a bad argument value, a missing model directory, an
unreadable key file, a malformed address); 130 interrupted.  Every error is one line on
stderr: 'petal CMD: error: WHAT (HOW TO FIX)'.
"""


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors on one line (the usage itself is in ``--help``)."""

    def error(self, message: str) -> NoReturn:
        hint = "" if message.endswith(")") else f" (see '{self.prog} --help')"
        self.exit(2, f"{self.prog}: error: {message}{hint}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="petal",
        description="Peer-to-peer LLM inference.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in commands().items():
        mod = _load(module)
        if mod is None:
            continue
        help_text = str(getattr(mod, "HELP", ""))
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.set_defaults(_module=mod)
        mod.add_arguments(cmd)
    return parser


def _load(module: str) -> Any:
    """The command module, or None when it is not installed (its package is absent)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.startswith(exc.name):
            return None
        raise


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(
        level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr
    )
    try:
        return int(args._module.run(args) or 0)
    except BaseException as exc:
        return _report(f"petal {args.command}", exc, verbose=args.verbose > 0)


def _report(prog: str, exc: BaseException, *, verbose: bool) -> int:
    """Print a failure as one line and return the exit status.

    Raises:
        BaseException: ``exc`` again when it is a plain ``SystemExit`` (``sys.exit``).
    """
    cause = root_cause(exc)
    if isinstance(cause, CommandError):
        print(f"{prog}: error: {cause.message}", file=sys.stderr)
        return cause.exit_code
    if isinstance(cause, KeyboardInterrupt):
        return 130
    if isinstance(cause, SystemExit):
        raise cause
    # A bug or a failure nobody foresaw: still one line, the traceback only on request.
    if verbose:
        traceback.print_exception(exc)
    text = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
    hint = "" if verbose else "; rerun with -v for the traceback"
    print(f"{prog}: error: {text} (unexpected{hint})", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
