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


def _progress(enabled: bool, total: int) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc="loading span",
        unit="step",
        disable=not enabled,
        file=sys.stderr,
        leave=False,
    )


def load_span(args: argparse.Namespace, start: int, end: int) -> Any:
    import torch

    from ._spans import SpanModel

    # --dtype choices are torch dtype names
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    span = SpanModel(
        args.model,
        start,
        end,
        device=args.device,
        dtype=dtype,
        quantization=args.quantize,
        max_sessions=args.max_sessions,
    )
    span.cache_budget_bytes = args.cache_tokens * span.cache_bytes_per_token
    return span


def serve_main(args: argparse.Namespace) -> int:
    from ._arch import load_config, num_layers

    model_name = args.model_name or Path(args.model).resolve().name
    total = num_layers(load_config(args.model))
    if args.blocks and args.blocks[1] > total:
        print(
            f"the model has {total} blocks; cannot serve {args.blocks[0]}:{args.blocks[1]}",
            file=sys.stderr,
        )
        return 2
    if args.num_blocks is not None and not 0 < args.num_blocks <= total:
        print(f"--num-blocks must be in 1..{total}", file=sys.stderr)
        return 2
    trio.run(_serve, args, model_name, total)
    return 0


async def _serve(args: argparse.Namespace, model_name: str, total: int) -> None:
    from petalproto.core._route import choose_blocks
    from petalproto.net import DhtService

    from ._announce import (
        ANNOUNCE_INTERVAL,
        ANNOUNCE_LIFETIME,
        keep_announced,
        spans_from_records,
        spans_key,
        withdraw,
    )
    from ._loop import run_in_own_thread
    from ._server import PeerServer, measure_throughput

    identity = load_identity(args.identity)
    host, port = args.listen
    node = Node(identity, host=host, port=port, announce_host=args.announce_host)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        dht = DhtService.for_node(node, initial_peers=parse_peers(args.initial_peers))
        await nursery.start(dht.run)
        if args.blocks:
            start, end = args.blocks
        else:
            known = spans_from_records(await dht.get(spans_key(model_name)), model_name)
            start, end = choose_blocks(known, total, args.num_blocks)
        started = time.perf_counter()
        with _progress(not args.no_progress, 2) as bar:
            span = await run_in_own_thread(load_span, args, start, end)
            bar.update(1)
            # On the loop's thread, where the steps will run too (see _server).
            throughput = measure_throughput(span)
            bar.update(1)
        log.info(
            "span %d:%d of %s loaded in %.2f s, %.1f tokens/s",
            start,
            end,
            model_name,
            time.perf_counter() - started,
            throughput,
        )
        server = PeerServer(span, model_name, throughput=throughput)
        server.register(node.router)
        announcing = trio.CancelScope()

        async def announce(task_status: trio.TaskStatus[None]) -> None:
            with announcing:
                await keep_announced(
                    dht,
                    identity,
                    server,
                    node.address,
                    interval=args.announce_interval or ANNOUNCE_INTERVAL,
                    lifetime=args.announce_lifetime or ANNOUNCE_LIFETIME,
                    task_status=task_status,
                )

        await nursery.start(announce)
        print_first_line(str(node.address))
        if args.address_file:
            write_atomic(Path(args.address_file), f"{node.address}\n".encode())
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        # Withdraw while the DHT still runs, then stop everything.
        announcing.cancel()
        await withdraw(
            dht, identity, model_name, lifetime=args.announce_lifetime or ANNOUNCE_LIFETIME
        )
        nursery.cancel_scope.cancel()


__all__ = ["serve_main"]
