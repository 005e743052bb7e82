"""``petal bench faults``: crashes, hangs and churn in a local swarm of the default model."""

from __future__ import annotations

import argparse
from typing import Any

from petalproto._commands._common import bounded_float, positive_int

from . import prepare_torch

#: The one-line help of this kind.
HELP = "recovery from a killed peer, a hung peer and churn (every span served twice)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--generations", type=positive_int(), default=20, help="faults: generations under churn"
    )
    parser.add_argument(
        "--churn-period",
        type=bounded_float(0.1),
        default=3.0,
        metavar="S",
        help="faults: seconds between a restarted peer and the next kill",
    )


def bench(args: argparse.Namespace) -> dict[str, Any]:
    prepare_torch()
    from .._bench_faults import run

    return run(generations=args.generations, churn_period=args.churn_period)
