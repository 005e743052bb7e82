"""``petal serve``: load a span, measure it, announce it, serve it until signalled."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import trio

from petalproto._commands._common import (
    load_identity,
    parse_peers,
    print_first_line,
    write_atomic,
)
from petalproto.net import Node

log = logging.getLogger("reference_peer.serve")

_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def _progress(enabled: bool, total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="loading span", unit="step", disable=not enabled,
                file=sys.stderr, leave=False)


def load_span(args: argparse.Namespace, start: int, end: int) -> Any:
    import torch

    from ._spans import SpanModel

    dtype = None if args.dtype == "auto" else getattr(torch, _DTYPES[args.dtype])
    span = SpanModel(args.model, start, end, device=args.device, dtype=dtype,
                     quantization=args.quantize, max_sessions=args.max_sessions)
    span.cache_budget_bytes = args.cache_tokens * span.cache_bytes_per_token
    return span


def serve_main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    from ._arch import load_config, num_layers
    from ._server import PeerServer, measure_throughput

    model_name = args.model_name or Path(args.model).resolve().name
    total = num_layers(load_config(args.model))
    start, end = args.blocks if args.blocks else (0, min(args.num_blocks, total))
    if end > total:
        print(f"the model has {total} blocks; cannot serve {start}:{end}", file=sys.stderr)
        return 2
    with _progress(not args.no_progress, 3) as bar:
        span = load_span(args, start, end)
        bar.update(2)
        throughput = measure_throughput(span)
        bar.update(1)
    server = PeerServer(span, model_name, throughput=throughput)
    log.info("span %d:%d of %s loaded in %.2f s, %.1f tokens/s", start, end, model_name,
             time.perf_counter() - started, throughput)
    trio.run(_serve, args, server)
    return 0


async def _serve(args: argparse.Namespace, server: Any) -> None:
    identity = load_identity(args.identity)
    host, port = args.listen
    node = Node(identity, host=host, port=port, announce_host=args.announce_host)
    server.register(node.router)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        print_first_line(str(node.address))
        if args.address_file:
            write_atomic(Path(args.address_file), f"{node.address}\n".encode())
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()


__all__ = ["parse_peers", "serve_main"]
