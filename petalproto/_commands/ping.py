"""``petal ping ADDRESS``: call ``ping`` (SPEC.md §10.3) on a peer and time each reply.

    petal ping PEERID@HOST:PORT [--count N] [--payload-bytes N] [--timeout S] [--interval S]

The command dials the address with the ordinary client stack (``petalproto.net``: Noise
handshake, peer id check of SPEC.md §4.2, streams with credit), then makes ``--count``
unary ``ping`` calls one after another on that connection.  Each request map carries
``{"pad": <--payload-bytes random bytes>}`` when ``--payload-bytes`` is above 0, so the
call also exercises DATA chunking and flow control (SPEC.md §8.4, §8.5).

Each reply prints one JSON line on stdout: ``{"seq": i, "rtt_ms": ..., "agent": ...,
"observed": ...}`` (``seq`` counts from 1).  A failed call (a RESET, a timeout) prints one
line on stderr naming the error code, and the next call follows.  Exit status: 0 when every
call was answered, 1 otherwise, also when the dial or handshake fails (one line naming the
address, or the peer that answered instead); 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import trio

from petalproto.core import Address, Identity, PeerIdMismatch, ProtocolError, encode
from petalproto.net import PeerConnection, RpcError, call, open_connection

from ._common import CommandFailed, UsageError, bounded_float, os_reason, positive_int

#: The one-line help of ``petal ping``.
HELP = "call 'ping' on a peer and print each round trip (JSON)"

__all__ = ["add_arguments", "ping_all", "run"]

PROG = "petal ping"


def _address(text: str) -> Address:
    try:
        return Address.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{exc} (expected PEERID@HOST:PORT, as the peer prints on its first line)"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address", type=_address, help="the peer, as PEERID@HOST:PORT")
    parser.add_argument(
        "--count", type=positive_int(), default=1, metavar="N", help="calls to make (default 1)"
    )
    parser.add_argument(
        "--payload-bytes",
        type=positive_int(0),
        default=0,
        metavar="N",
        help="random bytes to send in each request's 'pad' (default 0: an empty map)",
    )
    parser.add_argument(
        "--timeout",
        type=bounded_float(0.0, low_open=True),
        default=10.0,
        metavar="SECONDS",
        help="for the dial and for each call (default 10)",
    )
    parser.add_argument(
        "--interval",
        type=bounded_float(0.0),
        default=0.0,
        metavar="SECONDS",
        help="pause between calls (default 0)",
    )


async def ping_all(
    address: Address,
    *,
    count: int = 1,
    payload_bytes: int = 0,
    timeout: float = 10.0,
    interval: float = 0.0,
) -> int:
    """Dial ``address`` and ping it ``count`` times, printing a line per call.

    Returns:
        How many calls failed.

    Raises:
        CommandFailed: the dial or the handshake failed, or the peer is someone else.
        UsageError: the request would be over the peer's message limit.
    """
    identity = Identity.from_seed(os.urandom(32))
    where = address.host_port()
    try:
        async with open_connection(address, identity, connect_timeout=timeout) as peer:
            return await _ping_loop(peer, count, payload_bytes, timeout, interval)
    except PeerIdMismatch as exc:
        actual = str(exc).rpartition(" ")[2]
        raise CommandFailed(
            f"{where} is peer {actual}, not {address.peer_id} as the address says (fix the peer id)"
        ) from None
    except trio.TooSlowError:
        raise CommandFailed(
            f"{where} did not complete a handshake within {timeout:g} s "
            "(is it a petalproto peer? or raise --timeout)"
        ) from None
    except OSError as exc:
        raise CommandFailed(
            f"cannot reach {where}: {os_reason(exc)} (is the peer running? check ADDRESS)"
        ) from None
    except (ProtocolError, trio.BrokenResourceError) as exc:
        raise CommandFailed(
            f"handshake with {where} failed: {exc or type(exc).__name__} (is it a petalproto "
            "peer of this protocol version?)"
        ) from None


async def _ping_loop(
    peer: PeerConnection, count: int, payload_bytes: int, timeout: float, interval: float
) -> int:
    body: dict[str, Any] = {"pad": os.urandom(payload_bytes)} if payload_bytes else {}
    limit = peer.peer_settings.stream_window
    if len(encode(body)) > limit:
        raise UsageError(
            f"argument --payload-bytes: a request of {len(encode(body))} bytes is over the "
            f"peer's message limit of {limit} bytes (give at most {limit - 16})"
        )
    failed = 0
    for seq in range(1, count + 1):
        if seq > 1 and interval:
            await trio.sleep(interval)
        error = await _ping_once(peer, seq, body, timeout)
        if error is not None:
            failed += 1
            print(f"{PROG}: seq {seq}: {error}", file=sys.stderr, flush=True)
            if not peer.is_open:
                failed += count - seq
                print(f"{PROG}: connection closed; {count - seq} calls not made", file=sys.stderr)
                break
    return failed


async def _ping_once(
    peer: PeerConnection, seq: int, body: dict[str, Any], timeout: float
) -> str | None:
    """One call; prints its reply and returns None, or returns what went wrong."""
    start = trio.current_time()
    try:
        reply = await call(peer, "ping", body, timeout=timeout)
    except RpcError as exc:
        return f"RESET {exc.code.name}" + (f": {exc.reason}" if exc.reason else "")
    except trio.TooSlowError:
        return f"TIMEOUT: no reply within {timeout:g} s"
    except trio.BrokenResourceError as exc:
        return f"CONNECTION_CLOSED: {exc or 'the connection is gone'}"
    rtt_ms = (trio.current_time() - start) * 1000
    if not isinstance(reply, dict):
        return f"MALFORMED: the reply is a {type(reply).__name__}, not a map"
    line = {
        "seq": seq,
        "rtt_ms": round(rtt_ms, 3),
        "agent": reply.get("agent"),
        "observed": reply.get("observed"),
    }
    print(json.dumps(line, default=repr), flush=True)
    return None


def run(args: argparse.Namespace) -> int:
    failed = trio.run(
        lambda: ping_all(
            args.address,
            count=args.count,
            payload_bytes=args.payload_bytes,
            timeout=args.timeout,
            interval=args.interval,
        )
    )
    return 1 if failed else 0
