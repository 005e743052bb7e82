"""Helpers shared by subcommands: argument types, identities on disk, addresses, errors.

Every mistake a user can make on the command line ends in one line on stderr,
``petal CMD: error: WHAT (HOW TO FIX)``, never a traceback:

- argument values are checked by the ``type=`` functions here, so argparse reports them
  (exit 2) before anything runs;
- what only shows once the command runs raises ``UsageError`` (exit 2: the command line is
  wrong, such as an unreadable key file or a model directory transformers cannot read) or
  ``CommandFailed`` (exit 1: the world is not as the command line expects, such as a port in
  use or an initial peer that does not answer or is another peer). ``petalproto.cli.main``
  prints them, also from inside trio's exception groups.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from petalproto.core import Address, Identity, PeerIdMismatch, ProtocolError, split_host_port

if TYPE_CHECKING:
    from petalproto.net import DhtService, Node

__all__ = [
    "CommandError",
    "CommandFailed",
    "PeerProbe",
    "UsageError",
    "add_node_arguments",
    "address_list",
    "bounded_float",
    "check_initial_peers",
    "identity_file",
    "load_identity",
    "model_dir",
    "new_file",
    "os_reason",
    "parse_listen",
    "parse_peers",
    "positive_int",
    "print_first_line",
    "probe_peers",
    "root_cause",
    "start_node",
    "watch_initial_peers",
    "write_atomic",
]

log = logging.getLogger("petalproto.cli")

# Errors ------------------------------------------------------------------------------------


class CommandError(SystemExit):
    """Ends a command with one line on stderr and an exit code.

    It derives from ``SystemExit`` (as argparse's own exits do) so that no ``except
    Exception`` on the way up, in our code or a library's, mistakes it for a failure to
    retry or log.

    Attributes:
        message: what went wrong and how to fix it, without the ``petal CMD: error:`` prefix.
    """

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = self.exit_code


class UsageError(CommandError):
    """The command line is wrong (exit 2)."""

    exit_code = 2


class CommandFailed(CommandError):
    """The command could not do its job (exit 1)."""

    exit_code = 1


def root_cause(exc: BaseException) -> BaseException:
    """The exception to report from inside nested exception groups: the first
    ``CommandError`` among the leaves, else the first leaf."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves = list(_leaves(exc))
    ours = [leaf for leaf in leaves if isinstance(leaf, CommandError)]
    return (ours or leaves)[0]


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterable[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


# Argument types ----------------------------------------------------------------------------
# argparse turns an ArgumentTypeError into "argument --NAME: MESSAGE", so the messages here
# say what is wrong and how to fix it, but not the argument's name.


def positive_int(minimum: int = 1) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {minimum}, got {text!r} (give {minimum} or more)"
            )
        return value

    parse.__name__ = "integer"
    return parse


def bounded_float(
    low: float, high: float = float("inf"), *, low_open: bool = False
) -> Callable[[str], float]:
    """An argparse type: a number in ``[low, high]`` (``(low, high]`` when ``low_open``)."""
    bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        above = value > low if low_open else value >= low
        if not (above and value <= high):  # also false for nan
            raise argparse.ArgumentTypeError(f"expected a number in {bounds}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def parse_listen(text: str) -> tuple[str, int]:
    """An argparse type: ``HOST:PORT`` to listen on (port 0 for any free port)."""
    try:
        return split_host_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (expected HOST:PORT, e.g. 0.0.0.0:4001)") from None


def address_list(text: str) -> list[Address]:
    """An argparse type: one or more ``PEERID@HOST:PORT``, separated by commas."""
    out = []
    for part in text.replace(",", " ").split():
        try:
            out.append(Address.parse(part))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"{exc} (expected PEERID@HOST:PORT, as the peer prints on its first line)"
            ) from None
    return out


def parse_peers(values: Sequence[str | Address | Sequence[Address]] | None) -> list[Address]:
    """Flatten ``--initial-peers`` values (lists from ``address_list``, or text).

    Raises:
        UsageError: a text value is not an address.
    """
    out: list[Address] = []
    for value in values or []:
        if isinstance(value, Address):
            out.append(value)
        elif isinstance(value, str):
            try:
                out += address_list(value)
            except argparse.ArgumentTypeError as exc:
                raise UsageError(f"argument --initial-peers: {exc}") from None
        else:
            out += value
    return out


def identity_file(text: str) -> str:
    """An argparse type: a key file that parses, or a path where one can be created."""
    path = Path(text)
    if path.exists():
        _read_identity(path)
    elif not path.parent.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text}: directory {str(path.parent)!r} does not exist (create it first)"
        )
    return text


def _read_identity(path: Path) -> Identity:
    try:
        return Identity.from_pem(path.read_bytes())
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not a PKCS#8 PEM Ed25519 key"
        raise argparse.ArgumentTypeError(
            f"{path}: {why} (give a key file written by 'petal keygen FILE', "
            "or a path that does not exist yet to create one)"
        ) from None


def model_dir(text: str) -> str:
    """An argparse type: a checkpoint directory, which holds ``config.json``."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist (give a checkpoint directory)")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a directory (give a checkpoint directory)")
    if not (path / "config.json").is_file():
        raise argparse.ArgumentTypeError(
            f"{text} has no config.json (give a Hugging Face checkpoint directory: "
            "config.json and safetensors shards)"
        )
    try:
        json.loads((path / "config.json").read_bytes())
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"{text}/config.json is not JSON: {exc}") from None
    return text


def new_file(text: str) -> str:
    """An argparse type: a file we will write, in a directory that exists."""
    parent = Path(text).parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text}: directory {str(parent)!r} does not exist (create it first)"
        )
    return text


# Identities and files ----------------------------------------------------------------------


def load_identity(path: str | None) -> Identity:
    """Load the key file at ``path``, creating it (mode 0600) when missing; no path gives
    a fresh identity that lives as long as the process.

    Raises:
        UsageError: the file is not a key file, or cannot be read or created.
    """
    if path is None:
        return Identity.from_seed(os.urandom(32))
    file = Path(path)
    try:
        if file.exists():
            return _read_identity(file)
        identity = Identity.from_seed(os.urandom(32))
        write_atomic(file, identity.to_pem(), mode=0o600)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"argument --identity: {exc}") from None
    except OSError as exc:
        raise UsageError(f"argument --identity: cannot create {path}: {exc.strerror}") from None
    return identity


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temporary file, so readers never see half.

    Raises:
        OSError: the file cannot be written.
    """
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def print_first_line(text: str) -> None:
    """Print a line that a supervising process waits for (addresses), unbuffered."""
    print(text, flush=True)


# Nodes and peers ---------------------------------------------------------------------------


async def start_node(nursery: trio.Nursery, node: Node, listen: tuple[str, int]) -> None:
    """``await nursery.start(node.run)``, with a listening failure as one line.

    Raises:
        CommandFailed: we cannot listen on ``listen`` (port in use, unknown host).
    """
    try:
        await nursery.start(node.run)
    except BaseException as exc:
        cause = root_cause(exc)
        if isinstance(cause, OSError):
            host, port = listen
            shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            why = cause.strerror or str(cause)
            raise CommandFailed(
                f"argument --listen: cannot listen on {shown}: {why} (stop what uses "
                "the port or pick another; port 0 picks a free one)"
            ) from None
        raise


def os_reason(exc: OSError) -> str:
    """The reason of a failed dial, as the OS says it ("Connection refused"); trio's
    ``open_tcp_stream`` wraps the one error of each attempt in a summary."""
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup) and len(cause.exceptions) == 1:
        cause = cause.exceptions[0]
    if isinstance(cause, OSError) and cause.strerror and not exc.strerror:
        return cause.strerror
    return exc.strerror or str(exc)


@dataclass(frozen=True, slots=True)
class PeerProbe:
    """What dialling one initial peer showed.

    Attributes:
        address: the address as given.
        problem: None when the peer answered as itself, else one line saying what failed.
        wrong_peer: the handshake authenticated another peer id than the address names.
    """

    address: Address
    problem: str | None = None
    wrong_peer: bool = False


async def probe_peers(addresses: Sequence[Address], *, timeout: float = 3.0) -> list[PeerProbe]:
    """Dial every address at once (with a throwaway identity) and check who answers.

    Args:
        addresses: the initial peers.
        timeout: seconds each dial and handshake may take.

    Returns:
        One probe per address, in order.
    """
    from petalproto.net import open_connection

    identity = Identity.from_seed(os.urandom(32))
    probes: list[PeerProbe | None] = [None] * len(addresses)

    async def one(i: int, address: Address) -> None:
        where = address.host_port()
        problem, wrong = None, False
        try:
            async with open_connection(address, identity, connect_timeout=timeout):
                pass
        except PeerIdMismatch as exc:
            actual = str(exc).rpartition(" ")[2]
            problem = f"{where} is peer {actual}, not {address.peer_id} as --initial-peers says"
            wrong = True
        except trio.TooSlowError:
            problem = f"{where} did not complete a handshake within {timeout:g} s"
        except OSError as exc:
            problem = f"cannot reach {where}: {os_reason(exc)}"
        except (ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            problem = f"handshake with {where} failed: {exc or type(exc).__name__}"
        probes[i] = PeerProbe(address, problem, wrong)

    async with trio.open_nursery() as nursery:
        for i, address in enumerate(addresses):
            nursery.start_soon(one, i, address)
    return [probe for probe in probes if probe is not None]


async def check_initial_peers(
    addresses: Sequence[Address], *, strict: bool, timeout: float = 3.0
) -> None:
    """Probe ``addresses`` and log (at warning level) each one that fails.

    Args:
        addresses: the initial peers.
        strict: fail when one is another peer than it claims, or when none answers
            (clients); otherwise only log (servers keep retrying).
        timeout: seconds each dial may take.

    Raises:
        CommandFailed: ``strict`` and an initial peer is wrong or none answered.
    """
    probes = await probe_peers(addresses, timeout=timeout)
    bad = [p for p in probes if p.problem is not None]
    if strict:
        wrong = [p for p in bad if p.wrong_peer]
        if wrong:
            raise CommandFailed(f"{wrong[0].problem} (fix the peer id in --initial-peers)")
        if probes and len(bad) == len(probes):
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise CommandFailed(
                f"{bad[0].problem}{more} (is the swarm running? check --initial-peers)"
            )
    for probe in bad:
        log.warning("%s", probe.problem)


#: Seconds between repeated checks of the initial peers while a node has not joined.
RECHECK_INTERVAL = 30.0


async def watch_initial_peers(
    dht: DhtService, addresses: Sequence[Address], *, interval: float = RECHECK_INTERVAL
) -> None:
    """Probe ``addresses`` every ``interval`` seconds until ``dht`` joined, logging each
    failure again, so that a node that keeps retrying keeps saying why."""
    while addresses and not dht.bootstrapped:
        await trio.sleep(interval)
        if not dht.bootstrapped:
            await check_initial_peers(addresses, strict=False)


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
        "--identity",
        type=identity_file,
        metavar="FILE",
        help="identity key file (created when missing)",
    )
    parser.add_argument(
        "--address-file",
        type=new_file,
        metavar="FILE",
        help="write our dialable address here once it is ready to be used",
    )
    parser.add_argument(
        "--announce-host",
        metavar="HOST",
        help="host to put in our address (default: the listen host)",
    )
    # For tests: the port to put in our address, when a proxy in front of us listens on it.
    parser.add_argument(
        "--announce-port", type=positive_int(1), default=None, help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--initial-peers",
        nargs="*",
        type=address_list,
        metavar="ADDRESS",
        default=[],
        help="addresses (PEERID@HOST:PORT) of DHT nodes to join through",
    )
