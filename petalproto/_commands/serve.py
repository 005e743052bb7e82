"""``petal serve``: serve a span of a model's blocks (the work is in ``reference_peer``)."""

from __future__ import annotations

import argparse

from ._common import add_node_arguments


def parse_blocks(text: str) -> tuple[int, int]:
    start, sep, end = text.partition(":")
    if not sep or not start.isdigit() or not end.isdigit() or int(start) >= int(end):
        raise argparse.ArgumentTypeError(f"expected START:END with START < END, got {text!r}")
    return int(start), int(end)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
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
        "--num-blocks", type=int, metavar="N", help="serve N blocks where the swarm is thinnest"
    )
    add_node_arguments(parser)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"]
    )
    parser.add_argument("--quantize", choices=["int8", "nf4"], help="bitsandbytes quantization")
    parser.add_argument("--max-sessions", type=int, default=16, metavar="N")
    parser.add_argument(
        "--cache-tokens",
        type=int,
        default=65536,
        metavar="N",
        help="attention-cache budget, in tokens of one sequence",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    # For tests: refresh and expire the announcement within seconds rather than minutes.
    parser.add_argument("--announce-interval", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--announce-lifetime", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from reference_peer._serve import serve_main

    return serve_main(args)
