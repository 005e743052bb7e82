"""``petal generate``: one completion from a running swarm, streamed to stdout."""

from __future__ import annotations

import argparse

import trio

from petalproto._commands._common import (
    address_list,
    bounded_float,
    check_initial_peers,
    model_dir,
    parse_peers,
    positive_int,
)

from . import prepare_torch

#: The one-line help of ``petal generate``.
HELP = "generate text with a running swarm"


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--initial-peers",
        nargs="+",
        required=True,
        type=address_list,
        metavar="ADDRESS",
        help="DHT nodes of the swarm (PEERID@HOST:PORT)",
    )
    parser.add_argument(
        "--model",
        type=model_dir,
        metavar="PATH",
        help="checkpoint directory for the client's parts (default: the "
        "default model, prepared on first use)",
    )
    parser.add_argument(
        "--model-name",
        metavar="NAME",
        help="the model's name in the swarm (default: the directory's name)",
    )
    parser.add_argument(
        "--max-new-tokens", type=positive_int(), default=128, metavar="N", help="at least 1"
    )
    parser.add_argument(
        "--temperature", type=bounded_float(0.0), default=0.0, help="0 for greedy decoding"
    )
    parser.add_argument(
        "--top-p", type=bounded_float(0.0, 1.0, low_open=True), default=1.0, help="in (0, 1]"
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--min-precision",
        choices=["float32", "fp32", "bfloat16", "bf16", "float16", "fp16", "int8", "nf4"],
        default=None,
        help="use only spans of this precision or better (float32 > bfloat16 = float16 > "
        "int8 > nf4); by default any",
    )


def check_swarm(args: argparse.Namespace) -> None:
    """Dial the initial peers: the DHT join would retry for half a minute before failing.

    Raises:
        CommandFailed: an initial peer is another peer than its address says, or none
            answers.
    """
    peers = parse_peers(args.initial_peers)
    trio.run(lambda: check_initial_peers(peers, strict=True))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", required=True, help="the user's message")
    parser.add_argument(
        "--raw",
        action="store_true",
        help="complete the prompt as plain text, without the chat template",
    )
    add_client_arguments(parser)


def run(args: argparse.Namespace) -> int:
    prepare_torch()
    # Before torch loads: fail within seconds when the swarm is not there.
    check_swarm(args)
    from .._cli import generate_main

    return generate_main(args)
