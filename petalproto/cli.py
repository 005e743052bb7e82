"""The ``petal`` command: one entry point, a subcommand per job.

Each subcommand lives in ``petalproto._commands`` and is imported only when used, so
``petal dht`` never pays for torch.

A mistake on the command line ends in one line on stderr, ``petal CMD: error: WHAT (HOW
TO FIX)``, never in a traceback (see ``_commands/_common.py``); ``-v`` adds the traceback of
an unexpected failure.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from ._commands._common import CommandError, root_cause

__all__ = ["main"]

# name -> (module under petalproto._commands, one-line help)
_COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "prepare the default model, start a local swarm and chat with it"),
    "serve": ("serve", "serve a span of a model's blocks to the swarm"),
    "dht": ("dht", "run a DHT node"),
    "generate": ("generate", "generate text with a running swarm"),
    "chat": ("chat", "chat interactively with a running swarm"),
    "status": ("status", "show what a swarm's DHT knows"),
    "ping": ("ping", "call 'ping' on a peer and print each round trip (JSON)"),
    "keygen": ("keygen", "create an identity key file"),
    "bench": ("bench", "measure transport, DHT and swarm performance (JSON)"),
}

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
    for name, (module, help_text) in _COMMANDS.items():
        mod = _load(module)
        if mod is None:
            continue
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.set_defaults(_module=module)
        mod.add_arguments(cmd)  # type: ignore[attr-defined]
    return parser


def _load(module: str) -> object | None:
    try:
        return importlib.import_module(f"petalproto._commands.{module}")
    except ModuleNotFoundError as exc:
        if exc.name == f"petalproto._commands.{module}":
            return None
        raise


#: Subcommands that run torch models in this process.
_TORCH_COMMANDS = {"demo", "serve", "generate", "chat", "bench"}

#: OpenMP busy-waits this many rounds for more work before sleeping (libgomp's default is
#: 300,000, several milliseconds).  Peers on one machine take turns on the same cores, token
#: by token: a peer that just finished a step would otherwise spin on the cores the next
#: peer needs.  15,000 rounds still span the short gaps inside one step (measured with
#: `petal bench swarm`: 49 instead of 54-60 ms per token on 2 cores).  Set before torch loads.
GOMP_SPINCOUNT = "15000"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in _TORCH_COMMANDS and "torch" not in sys.modules:
        os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(
        level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr
    )
    mod = _load(args._module)
    assert mod is not None
    try:
        return int(mod.run(args) or 0)  # type: ignore[attr-defined]
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
