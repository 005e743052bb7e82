"""``petal dht``: run a node that speaks the transport and serves the DHT."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

import trio

from petalproto.net import Node

from ._common import load_identity, parse_listen, parse_peers, print_first_line, write_atomic


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 0),
                        metavar="HOST:PORT", help="where to listen (port 0: any free port)")
    parser.add_argument("--identity", metavar="FILE",
                        help="identity key file (created when missing)")
    parser.add_argument("--address-file", metavar="FILE",
                        help="write our dialable address here once listening")
    parser.add_argument("--announce-host", metavar="HOST",
                        help="host to put in our address (default: the listen host)")
    parser.add_argument("--initial-peers", nargs="*", metavar="ADDRESS", default=[],
                        help="addresses (PEERID@HOST:PORT) of nodes to join through")


async def serve_node(args: argparse.Namespace) -> None:
    identity = load_identity(args.identity)
    host, port = args.listen
    node = Node(identity, host=host, port=port, announce_host=args.announce_host)
    initial = parse_peers(args.initial_peers)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        print_first_line(str(node.address))
        if args.address_file:
            write_atomic(Path(args.address_file), f"{node.address}\n".encode())
        for peer in initial:
            nursery.start_soon(_greet, node, peer)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


async def _greet(node: Node, peer: object) -> None:
    from petalproto.core import Address

    assert isinstance(peer, Address)
    try:
        await node.pool.call(peer, "ping", {}, timeout=5)
    except Exception as exc:
        print(f"initial peer {peer} unreachable: {exc!r}", flush=True)


def run(args: argparse.Namespace) -> int:
    trio.run(serve_node, args)
    return 0
