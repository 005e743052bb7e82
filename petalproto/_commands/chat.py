"""``petal chat``: an interactive chat with a running swarm."""

from __future__ import annotations

import argparse

from .generate import add_client_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_client_arguments(parser)
    parser.add_argument("--system", default=None, help="a system message")


def run(args: argparse.Namespace) -> int:
    from reference_peer._cli import chat_main

    return chat_main(args)
