"""``petal demo``: prepare the default model, start a local swarm, chat with it, stop."""

from __future__ import annotations

import argparse

from petalproto._commands._common import positive_int

from . import prepare_torch

#: The one-line help of ``petal demo``.
HELP = "prepare the default model, start a local swarm and chat with it"

DEFAULT_PROMPT = "What are the three primary colors? Answer in one sentence."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the question to ask")
    parser.add_argument("--peers", type=positive_int(), default=3, help="peer processes to start")
    parser.add_argument("--max-new-tokens", type=positive_int(), default=64, metavar="N")


def run(args: argparse.Namespace) -> int:
    prepare_torch()
    from .._cli import demo_main

    return demo_main(args)
