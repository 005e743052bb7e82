"""``petal demo``: prepare the default model, start a local swarm, chat with it, stop."""

from __future__ import annotations

import argparse

from ._common import positive_int

DEFAULT_PROMPT = "What are the three primary colors? Answer in one sentence."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the question to ask")
    parser.add_argument("--peers", type=positive_int(), default=3, help="peer processes to start")
    parser.add_argument("--max-new-tokens", type=positive_int(), default=64, metavar="N")


def run(args: argparse.Namespace) -> int:
    from reference_peer._cli import demo_main

    return demo_main(args)
