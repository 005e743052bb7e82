"""``petal serve``: serve a span of a model's blocks (the work is in ``reference_peer``)."""

from __future__ import annotations

import argparse
import re

from petalproto._commands._common import add_node_arguments, model_dir, positive_int

from . import prepare_torch

#: The one-line help of ``petal serve``.
HELP = "serve a span of a model's blocks to the swarm"

#: What ``--device`` accepts (torch's device strings this peer can run on).
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def parse_blocks(text: str) -> tuple[int, int]:
    """An argparse type: ``START:END`` with ``START < END``."""
    start, sep, end = text.partition(":")
    if not sep or not start.isdigit() or not end.isdigit() or int(start) >= int(end):
        raise argparse.ArgumentTypeError(
            f"expected START:END with START < END, got {text!r} (e.g. 0:12 serves blocks 0 to 11)"
        )
    return int(start), int(end)


def parse_device(text: str) -> str:
    """An argparse type: ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N``."""
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"unknown device {text!r} (give auto, cpu, mps, cuda or cuda:N)"
        )
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        type=model_dir,
        metavar="PATH",
        help="checkpoint directory (config.json + safetensors shards)",
    )
    parser.add_argument(
        "--model-name",
        metavar="NAME",
        help="the model's name in the swarm (default: the directory's name)",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--blocks", type=parse_blocks, metavar="A:B", help="serve blocks [A, B)")
    which.add_argument(
        "--num-blocks",
        type=positive_int(),
        metavar="N",
        help="serve N blocks where the swarm is thinnest",
    )
    add_node_arguments(parser)
    parser.add_argument(
        "--device", type=parse_device, default="auto", help="auto, cpu, mps, cuda, cuda:N"
    )
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"]
    )
    parser.add_argument("--quantize", choices=["int8", "nf4"], help="bitsandbytes quantization")
    parser.add_argument(
        "--max-sessions",
        type=positive_int(),
        default=16,
        metavar="N",
        help="inference sessions served at once (at least 1)",
    )
    parser.add_argument(
        "--cache-tokens",
        type=positive_int(),
        default=65536,
        metavar="N",
        help="attention-cache budget, in tokens of one sequence (at least 1)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    # For tests: refresh and expire the announcement within seconds rather than minutes.
    parser.add_argument("--announce-interval", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--announce-lifetime", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    prepare_torch()
    from .._serve import serve_main

    return serve_main(args)
