"""``petal dht``: run a full DHT node (SPEC.md §12) that also answers ``ping``.

The first line on stdout is the node's dialable address, printed (and written to
``--address-file``) only once the node listens *and* has joined through its initial peers,
so that a script may start the next node as soon as it reads the line.
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

import trio

from petalproto.net import Node
from petalproto.net._dht import DhtService

from ._common import (
    add_node_arguments,
    check_initial_peers,
    load_identity,
    parse_peers,
    print_first_line,
    start_node,
    watch_initial_peers,
    write_atomic,
)

#: The one-line help of ``petal dht``.
HELP = "run a DHT node"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_node_arguments(parser)


async def serve_node(args: argparse.Namespace) -> None:
    identity = load_identity(args.identity)
    host, port = args.listen
    initial = parse_peers(args.initial_peers)
    node = Node(
        identity,
        host=host,
        port=port,
        announce_host=args.announce_host,
        announce_port=args.announce_port,
    )
    async with trio.open_nursery() as nursery:
        await start_node(nursery, node, args.listen)
        # Name an initial peer that is down or is someone else: the join below only retries.
        others = [a for a in initial if a.peer_id != identity.peer_id]
        await check_initial_peers(others, strict=False)
        dht = DhtService.for_node(node, initial_peers=initial)
        nursery.start_soon(watch_initial_peers, dht, others)
        await nursery.start(dht.run)
        print_first_line(str(node.address))
        if args.address_file:
            write_atomic(Path(args.address_file), f"{node.address}\n".encode())
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def run(args: argparse.Namespace) -> int:
    trio.run(serve_node, args)
    return 0
