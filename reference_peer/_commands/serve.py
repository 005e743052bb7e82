"""``petal serve``: serve a span of a model's blocks (the work is in ``reference_peer``)."""

from __future__ import annotations

import argparse
import re

from petalproto._commands._common import (
    add_node_arguments,
    bounded_float,
    model_dir,
    positive_int,
)

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


def parse_num_blocks(text: str) -> int | str:
    """An argparse type: ``auto`` or a positive integer."""
    return "auto" if text == "auto" else positive_int()(text)


_SIZE = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[KMGT]i?B|B)?", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_size(text: str) -> int:
    """An argparse type: a positive number of bytes, with an optional unit (``6GiB``)."""
    match = _SIZE.fullmatch(text.strip())
    size = 0
    if match is not None:
        size = int(float(match["number"]) * _UNITS[(match["unit"] or "").lower()])
    if size <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a size such as 6GiB, 800MB or 1048576, got {text!r}"
        )
    return size


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
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--blocks", type=parse_blocks, metavar="A:B", help="serve blocks [A, B)")
    which.add_argument(
        "--num-blocks",
        type=parse_num_blocks,
        default="auto",
        metavar="N",
        help="serve N blocks where the swarm is thinnest; auto (the default): as many as fit "
        "the device's free memory after room for the attention cache",
    )
    add_node_arguments(parser)
    parser.add_argument(
        "--device", type=parse_device, default="auto", help="auto, cpu, mps, cuda, cuda:N"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "float16", "bfloat16"],
        help="compute dtype; auto (the default): bfloat16 on GPUs that support it, float16 on "
        "older GPUs, float32 on CPUs",
    )
    parser.add_argument(
        "--quantize",
        default="auto",
        choices=["auto", "none", "int8", "nf4"],
        help="bitsandbytes quantization of the linear layers; auto (the default): none when "
        "the blocks fit the device's free memory, else int8, else nf4",
    )
    parser.add_argument(
        "--memory",
        type=parse_size,
        default=None,
        metavar="SIZE",
        help="the most device memory to plan with, such as 6GiB or 800MB (default: what is "
        "free); --quantize auto and --num-blocks auto fit the blocks in it",
    )
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
    parser.add_argument(
        "--rebalance-period",
        type=bounded_float(0.0),
        default=None,
        metavar="SECONDS",
        help="check the swarm about every SECONDS (jittered) and move to other blocks, after "
        "the open sessions end (or a minute passes), when that raises the swarm's slowest "
        "block's throughput by over a third or covers blocks nobody serves; 0 never moves. "
        "Default: 120 with --num-blocks, 0 with --blocks",
    )
    parser.add_argument(
        "--busy-poll",
        action="store_true",
        help="while sessions are open, keep the host's cores busy with idle-priority spinners "
        "(SCHED_IDLE: they never take time from real work), so that cores that slow down "
        "when idle compute the next step at full speed; costs power, for CPU hosts",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    # For tests: refresh and expire the announcement within seconds rather than minutes.
    parser.add_argument("--announce-interval", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--announce-lifetime", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    prepare_torch()
    from .._serve import serve_main

    return serve_main(args)
