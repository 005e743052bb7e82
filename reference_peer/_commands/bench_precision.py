"""``petal bench precision``: what each precision a peer can serve in costs in accuracy and
time, against float32 local transformers of the same checkpoint in the same run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from petalproto._commands._common import model_dir, positive_int

from . import add_tokens_argument, prepare_torch

#: The one-line help of this kind.
HELP = "accuracy and speed of each precision of the default model's spans"

#: The precisions the bench knows, in the order it measures them (``_bench_precision``
#: holds what each one means; a test checks that both name the same).
NAMES = ("float32", "bfloat16", "float16", "int8", "nf4")

#: What ``--device`` accepts.
DEVICES = ("auto", "cpu", "cuda")


def parse_precisions(text: str) -> list[str]:
    """An argparse type: a comma-separated subset of ``NAMES``, each named once."""
    names = [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in NAMES]
    if unknown or len(set(names)) != len(names):
        what = f"unknown precision {unknown[0]!r}" if unknown else f"a repeated name in {text!r}"
        raise argparse.ArgumentTypeError(
            f"{what} (give a comma-separated list of {', '.join(NAMES)})"
        )
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        type=model_dir,
        default=None,
        metavar="PATH",
        help="precision: checkpoint directory (default: the default model)",
    )
    parser.add_argument(
        "--device", choices=DEVICES, default="auto", help="precision: where the spans run"
    )
    parser.add_argument(
        "--prompts",
        type=positive_int(),
        default=None,
        metavar="N",
        help="precision: how many of its prompts to use (default: all)",
    )
    parser.add_argument(
        "--precisions",
        type=parse_precisions,
        default=None,
        metavar="LIST",
        help=f"precision: which ones, comma-separated (default: {','.join(NAMES)})",
    )
    add_tokens_argument(parser)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    prepare_torch()
    from .._bench_precision import run
    from .._cli import default_model

    kwargs: dict[str, Any] = {
        "path": Path(args.model) if args.model else default_model(),
        "device": args.device,
    }
    if args.prompts:
        kwargs["prompts"] = args.prompts
    if args.tokens:
        kwargs["tokens"] = args.tokens
    if args.precisions:
        kwargs["precisions"] = args.precisions
    return run(**kwargs)
