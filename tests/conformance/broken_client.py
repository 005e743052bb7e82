"""A second, deliberately breakable client for the conformance suite's client role.

    python -m tests.conformance.broken_client ADDRESS [--fault NAME ...] [--count N]
                                                      [--payload-bytes N]

It is written on the suite's own fault-injecting initiator (``conformance._wire.Session``)
instead of ``petalproto.net``, so that it shares no transport code with our real client:
with no fault it must pass every client case, and each fault breaks one rule of SPEC.md
that some case must catch (``test_client_role.py``):

* ``no-peer-check``: goes on when the responder is not the peer the address names (§4.2);
* ``no-sig-check``: goes on when message 2's identity signature does not verify (§6.6);
* ``lax-keys``: takes any 32 bytes for a peer id, in the address and in message 2 (§3.3);
* ``go-on``: after any failure in message 2 (a tampered byte, a low-order key), still sends
  a message 3 of the right length (§6.6);
* ``ignore-credit``: sends every request whole, whatever the credit (§8.5);
* ``ignore-reset``: finishes sending a request on a stream the responder reset (§8.6).

It makes ``--count`` ``ping`` calls with a ``pad`` of ``--payload-bytes``, one after another.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from typing import Any

import trio

from conformance._wire import Session, TargetViolation, Wire, WireLog, WireTimeout
from petalproto.core import Address
from petalproto.core._errors import HandshakeFailed
from petalproto.core._frames import DataFlags, FrameType, encode_frame
from petalproto.core._msgpack import encode

FAULTS = ("no-peer-check", "no-sig-check", "lax-keys", "go-on", "ignore-credit", "ignore-reset")
#: SPEC.md §8.4: a DATA chunk that fits one transport message.
CHUNK = 65488
TIMEOUT = 10.0


class Client:
    """One connection: the handshake, then calls with credit bookkeeping."""

    def __init__(self, session: Session, faults: set[str]) -> None:
        self.session = session
        self.faults = faults
        self.conn_credit = 0
        self.stream_credit: dict[int, int] = {}
        self.reset: set[int] = set()
        self.answered: set[int] = set()

    async def handshake(self, expected: bytes) -> bool:
        session, deadline = self.session, trio.current_time() + TIMEOUT
        await session.send_noise(session.msg1(), note="msg1")
        try:
            hello = await session.read_msg2(deadline)
        except HandshakeFailed:
            return await self._go_on_anyway()
        except TargetViolation:  # the payload is no valid identity proof
            if not {"no-sig-check", "lax-keys"} & self.faults:
                return False
            await session.send_noise(session.msg3(), note="msg3")
            return False  # it went on with message 3, which is the fault; no calls follow
        if hello is None:
            return False
        if hello.peer_id.raw != expected and "no-peer-check" not in self.faults:
            return False
        await session.send_noise(session.msg3(), note="msg3")
        self.conn_credit = hello.settings.connection_window
        return True

    async def _go_on_anyway(self) -> bool:
        if "go-on" in self.faults:
            await self.session.send_noise(os.urandom(64 + len(self.session.payload())))
        return False

    async def _read_one(self) -> None:
        frame = await self.session.next_frame(trio.current_time() + TIMEOUT)
        if frame is None:
            raise EOFError
        kind = frame[0]
        if kind is FrameType.CREDIT:
            if frame[1] == 0:
                self.conn_credit += frame[2]
            else:
                self.stream_credit[frame[1]] = self.stream_credit.get(frame[1], 0) + frame[2]
        elif kind is FrameType.RESET:
            self.reset.add(frame[1])
        elif kind is FrameType.DATA and frame[2] & DataFlags.END_STREAM:
            self.answered.add(frame[1])
        elif kind is FrameType.PING:
            await self.session.send_frame(FrameType.PONG, frame[1])

    async def ping(self, stream_id: int, pad: bytes) -> None:
        """One ``ping`` call, sent within credit (unless faulty), then its answer."""
        session = self.session
        body = encode({"pad": pad})
        self.stream_credit[stream_id] = session.theirs.stream_window
        await session.send_frame(FrameType.OPEN, stream_id, "ping")
        for start in range(0, len(body), CHUNK):
            chunk = body[start : start + CHUNK]
            while self._blocked(stream_id, len(chunk)):
                await self._read_one()
            if stream_id in self.reset and "ignore-reset" not in self.faults:
                return
            last = start + CHUNK >= len(body)
            flags = DataFlags.END_MESSAGE | DataFlags.END_STREAM if last else 0
            self.conn_credit -= len(chunk)
            self.stream_credit[stream_id] -= len(chunk)
            await session.send_frames(encode_frame(FrameType.DATA, stream_id, flags, chunk))
        while stream_id not in self.answered and stream_id not in self.reset:
            await self._read_one()

    def _blocked(self, stream_id: int, size: int) -> bool:
        if "ignore-credit" in self.faults:
            return False
        if stream_id in self.reset:
            return "ignore-reset" in self.faults and self.conn_credit < size
        return min(self.conn_credit, self.stream_credit[stream_id]) < size


def parse_address(text: str, *, lax: bool) -> tuple[bytes, str, int]:
    """``PEERID@HOST:PORT`` as (raw peer id, host, port).

    Raises:
        ValueError: not an address (with ``lax``, any 32 bytes pass as a peer id).
    """
    if not lax:
        address = Address.parse(text)
        return address.peer_id.raw, address.host, address.port
    peer, _, rest = text.partition("@")
    host, _, port = rest.rpartition(":")
    raw = base64.b32decode(peer.upper() + "=" * (-len(peer) % 8))
    return raw, host.strip("[]"), int(port)


async def run(text: str, faults: set[str], count: int, payload_bytes: int) -> int:
    try:
        expected, host, port = parse_address(text, lax="lax-keys" in faults)
    except ValueError as exc:
        print(f"broken_client: bad address: {exc}", file=sys.stderr)
        return 2
    tcp = await trio.open_tcp_stream(host, port)
    session = Session(Wire(tcp, WireLog(0.0)))
    client = Client(session, faults)
    if not await client.handshake(expected):
        await tcp.aclose()
        return 1
    try:
        for i in range(count):
            await client.ping(2 * i + 1, os.urandom(payload_bytes))
    except (EOFError, WireTimeout, TargetViolation):
        return 1
    finally:
        await tcp.aclose()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="broken_client")
    parser.add_argument("address")
    parser.add_argument("--fault", action="append", choices=FAULTS, default=[])
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--payload-bytes", type=int, default=60000)
    args: Any = parser.parse_args(argv)
    return trio.run(run, args.address, set(args.fault), args.count, args.payload_bytes)


if __name__ == "__main__":
    sys.exit(main())
