"""The ``petal`` command: one entry point, a subcommand per job.

Each subcommand lives in ``petalproto._commands`` and is imported only when used, so
``petal dht`` never pays for torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]

# name -> (module under petalproto._commands, one-line help)
_COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "prepare the default model, start a local swarm and chat with it"),
    "serve": ("serve", "serve a span of a model's blocks to the swarm"),
    "dht": ("dht", "run a DHT node"),
    "generate": ("generate", "generate text with a running swarm"),
    "chat": ("chat", "chat interactively with a running swarm"),
    "status": ("status", "show what a swarm's DHT knows"),
    "keygen": ("keygen", "create an identity key file"),
    "bench": ("bench", "measure transport, DHT and swarm performance (JSON)"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="petal", description="Peer-to-peer LLM inference.")
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
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
