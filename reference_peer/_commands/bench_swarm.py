"""``petal bench swarm``: the default model through local peers, against local transformers."""

from __future__ import annotations

import argparse
from typing import Any

from petalproto._commands._common import bounded_float, positive_int

from . import add_tokens_argument, prepare_torch

#: The one-line help of this kind.
HELP = "the default model through local peers"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--peers", type=positive_int(), default=3, help="swarm: peer processes")
    parser.add_argument(
        "--delay-ms",
        type=bounded_float(0.0),
        default=0.0,
        metavar="D",
        help="swarm: delay every link by D ms one way (an emulated WAN: a delay proxy in "
        "front of every process)",
    )
    parser.add_argument(
        "--busy-poll",
        action="store_true",
        help="swarm: run the peers with --busy-poll (cores kept busy between steps)",
    )
    add_tokens_argument(parser)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    prepare_torch()
    from .._bench_swarm import run

    kwargs: dict[str, Any] = {
        "peers": args.peers,
        "delay_ms": args.delay_ms,
        "busy_poll": args.busy_poll,
    }
    if args.tokens:
        kwargs["tokens"] = args.tokens
    return run(**kwargs)
