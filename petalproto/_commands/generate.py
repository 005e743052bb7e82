"""``petal generate``: one completion from a running swarm, streamed to stdout."""

from __future__ import annotations

import argparse


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--initial-peers",
        nargs="+",
        required=True,
        metavar="ADDRESS",
        help="DHT nodes of the swarm (PEERID@HOST:PORT)",
    )
    parser.add_argument(
        "--model",
        metavar="PATH",
        help="checkpoint directory for the client's parts (default: the "
        "default model, prepared on first use)",
    )
    parser.add_argument(
        "--model-name",
        metavar="NAME",
        help="the model's name in the swarm (default: the directory's name)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 for greedy decoding")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", required=True, help="the user's message")
    parser.add_argument(
        "--raw",
        action="store_true",
        help="complete the prompt as plain text, without the chat template",
    )
    add_client_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from reference_peer._cli import generate_main

    return generate_main(args)
