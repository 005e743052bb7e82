"""The ``petal`` subcommands of the reference peer: ``serve``, ``generate``, ``chat``,
``demo`` and the ``swarm`` and ``precision`` kinds of ``petal bench``.

They are registered in ``pyproject.toml`` (entry-point groups ``petal.commands`` and
``petal.bench``), so that ``petalproto`` never names this package. Each module follows
``petalproto.cli``'s protocol: ``HELP``, ``add_arguments(parser)`` and ``run(args)``. Their
top level imports no torch: ``petal --help`` loads every command module.
"""

from __future__ import annotations

import argparse
import os
import sys

from petalproto._commands._common import positive_int

__all__ = ["GOMP_SPINCOUNT", "add_tokens_argument", "prepare_torch"]

#: OpenMP busy-waits this many rounds for more work before sleeping (libgomp's default is
#: 300,000, several milliseconds).  Peers on one machine take turns on the same cores, token
#: by token: a peer that just finished a step would otherwise spin on the cores the next
#: peer needs.  15,000 rounds still span the short gaps inside one step (measured with
#: `petal bench swarm`: 49 instead of 54-60 ms per token on 2 cores).  Set before torch loads.
GOMP_SPINCOUNT = "15000"


def prepare_torch() -> None:
    """Set the environment torch reads when it loads (a no-op once it is loaded)."""
    if "torch" not in sys.modules:
        os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)


def add_tokens_argument(parser: argparse.ArgumentParser) -> None:
    """``--tokens``, read by both bench kinds here: every kind adds its options to the one
    ``petal bench`` parser, so whichever kind comes first adds it, and the other finds it."""
    try:
        parser.add_argument(
            "--tokens",
            type=positive_int(),
            default=None,
            metavar="N",
            help="swarm, precision: tokens to generate (swarm: 48; precision: 16 per prompt)",
        )
    except argparse.ArgumentError:
        pass  # added by the other kind
