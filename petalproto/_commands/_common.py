"""Helpers shared by subcommands: identities on disk, addresses, printing."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from petalproto.core import Address, Identity, split_host_port

__all__ = [
    "add_node_arguments",
    "load_identity",
    "parse_listen",
    "parse_peers",
    "print_first_line",
    "write_atomic",
]


def load_identity(path: str | None) -> Identity:
    """Load the key file at ``path``, creating it (mode 0600) when missing; no path gives
    a fresh identity that lives as long as the process."""
    if path is None:
        return Identity.from_seed(os.urandom(32))
    file = Path(path)
    if file.exists():
        return Identity.from_pem(file.read_bytes())
    identity = Identity.from_seed(os.urandom(32))
    write_atomic(file, identity.to_pem(), mode=0o600)
    return identity


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def parse_listen(text: str) -> tuple[str, int]:
    try:
        return split_host_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_peers(values: list[str] | None) -> list[Address]:
    out = []
    for value in values or []:
        for part in value.replace(",", " ").split():
            try:
                out.append(Address.parse(part))
            except ValueError as exc:
                raise SystemExit(f"bad peer address {part!r}: {exc}") from None
    return out


def print_first_line(text: str) -> None:
    """Print a line that a supervising process waits for (addresses), unbuffered."""
    print(text, flush=True)


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of every command that runs a node: where it listens, who it is, how it
    joins, where it writes its address."""
    parser.add_argument(
        "--listen",
        type=parse_listen,
        default=("127.0.0.1", 0),
        metavar="HOST:PORT",
        help="where to listen (port 0: any free port)",
    )
    parser.add_argument(
        "--identity", metavar="FILE", help="identity key file (created when missing)"
    )
    parser.add_argument(
        "--address-file",
        metavar="FILE",
        help="write our dialable address here once it is ready to be used",
    )
    parser.add_argument(
        "--announce-host",
        metavar="HOST",
        help="host to put in our address (default: the listen host)",
    )
    parser.add_argument(
        "--initial-peers",
        nargs="*",
        metavar="ADDRESS",
        default=[],
        help="addresses (PEERID@HOST:PORT) of DHT nodes to join through",
    )
