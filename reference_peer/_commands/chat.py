"""``petal chat``: an interactive chat with a running swarm."""

from __future__ import annotations

import argparse

from . import prepare_torch
from .generate import add_client_arguments, check_swarm

#: The one-line help of ``petal chat``.
HELP = "chat interactively with a running swarm"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_client_arguments(parser)
    parser.add_argument("--system", default=None, help="a system message")


def run(args: argparse.Namespace) -> int:
    prepare_torch()
    # Before torch loads: fail within seconds when the swarm is not there.
    check_swarm(args)
    from .._cli import chat_main

    return chat_main(args)
