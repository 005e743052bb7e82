"""The client role: the suite listens, the implementation under test dials it.

``petal-conformance --role client --dial-command "CMD … {address} …"`` checks the
initiator's side of SPEC.md.  For every case the suite opens a fresh listener on loopback,
runs the dial command with ``{address}`` replaced by the listener's dialable address
(§4.1), accepts the client's connection and plays a scriptable Noise XX responder that can
lie about its identity, forge its signature, tamper with message 2, send a low-order
ephemeral key, withhold credit or reset a stream.  The case then judges what the client
sent (or did not send) on the wire; the command's exit status is only reported.

The dial command runs once per case and is stopped when the case ends.  It should make a
few calls after the handshake: cases about flow control and RESET need at least three
``ping`` calls carrying about 60,000 bytes each (``petal ping {address} --count 3
--payload-bytes 60000`` is our own client).  A command that never connects gets ERROR
(infrastructure), except in cases where refusing to connect is a correct outcome.
"""

from __future__ import annotations

import base64
import os
import shlex
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from petalproto.core import Identity, PeerId, Settings
from petalproto.core._errors import HandshakeFailed, RemoteProtocolError
from petalproto.core._handshake import PROLOGUE, SIG_PREFIX, make_payload, read_payload
from petalproto.core._noise import HandshakeState

from ._harness import (
    Case,
    CaseContext,
    InfrastructureError,
    Options,
    Outcome,
    Registry,
    Result,
    run_cases,
)
from ._wire import Session, Wire, WireLog, WireTimeout

__all__ = [
    "CLIENT_REGISTRY",
    "ClientCaseContext",
    "ClientOptions",
    "ResponderSession",
    "client_case",
    "closes_without_msg3",
    "forged_static_signature",
    "peer_id_text",
    "run_client_cases",
]

#: The client cases, apart from the responder cases of ``conformance.cases``: their ids
#: name the same SPEC.md sections, seen from the dialler's side.
CLIENT_REGISTRY = Registry()

ClientCaseFn = Callable[["ClientCaseContext"], Awaitable[Outcome]]


def client_case(case_id: str, **details: Any) -> Callable[[ClientCaseFn], ClientCaseFn]:
    """Decorator registering a client case; ``details`` are ``Registry.case``'s."""

    def register(fn: ClientCaseFn) -> ClientCaseFn:
        async def run(ctx: CaseContext) -> Outcome:
            assert isinstance(ctx, ClientCaseContext)
            return await fn(ctx)

        CLIENT_REGISTRY.case(case_id, **details)(run)
        return fn

    return register


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """How the client role runs the implementation under test.

    Attributes:
        dial_command: a shell-style command line containing ``{address}``.
        timeout: seconds each case waits for the client's next move.
        connect_timeout: seconds the client has to connect after it was started (a process
            that imports a large runtime first needs a few).
        host: where the suite listens.
    """

    dial_command: str
    timeout: float = 2.0
    connect_timeout: float = 20.0
    host: str = "127.0.0.1"

    def argv(self, address: str) -> list[str]:
        """The command with the address filled in.

        Raises:
            ValueError: the command names no ``{address}``.
        """
        if "{address}" not in self.dial_command:
            raise ValueError("the dial command must contain {address}")
        return shlex.split(self.dial_command.replace("{address}", address))


class ClientCaseContext(CaseContext):
    """A running client case: its listener, the client process and the accepted wires."""

    def __init__(self, the_case: Case, options: ClientOptions, log: WireLog) -> None:
        super().__init__(the_case, Options(host=options.host, port=0), log)
        self.client_options = options
        self.timeout = the_case.timeout or options.timeout
        self.deadline = self.started + self.timeout
        self.scope.deadline = self._client_limit()
        self.identity = Identity.from_seed(os.urandom(32))
        self.address = ""  # what the client was told to dial, once started
        self._listeners: list[trio.SocketListener] = []
        self._process: trio.Process | None = None
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in aclose)

    def _client_limit(self) -> float:
        return self.deadline + self.client_options.connect_timeout + self.options.grace

    def set_window(self, seconds: float) -> None:
        super().set_window(seconds)
        self.scope.deadline = self._client_limit()

    async def start_client(self, peer_id: PeerId | str | None = None) -> None:
        """Listen, then run the dial command against our address.

        Args:
            peer_id: the peer id the address names (default: ours); a case that lies about
                its identity names another one, or a text that is no valid peer id.
        """
        listeners = await trio.open_tcp_listeners(0, host=self.client_options.host)
        self._listeners.extend(listeners)
        port = listeners[0].socket.getsockname()[1]
        named = self.identity.peer_id if peer_id is None else peer_id
        host = self.client_options.host
        address = f"{named}@[{host}]:{port}" if ":" in host else f"{named}@{host}:{port}"
        self.address = address
        argv = self.client_options.argv(address)
        self.log.add("send", "note", b"", f"dial command: {shlex.join(argv)}")
        try:
            self._process = await trio.lowlevel.open_process(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr
            )
        except OSError as exc:
            raise InfrastructureError(f"cannot run the dial command: {exc}") from exc

    async def accept(self, *, required: bool = True) -> Wire | None:
        """The client's TCP connection.

        Args:
            required: when False, a client that exits or waits without connecting gives
                None instead of an infrastructure error.

        Raises:
            InfrastructureError: no connection within ``connect_timeout`` (``required``).
        """
        listener = self._listeners[0]
        limit = trio.current_time() + self.client_options.connect_timeout
        with trio.move_on_at(limit):
            async with trio.open_nursery() as nursery:
                accepted: list[trio.SocketStream] = []

                async def take() -> None:
                    accepted.append(await listener.accept())
                    nursery.cancel_scope.cancel()

                async def exited() -> None:
                    assert self._process is not None
                    await self._process.wait()
                    await trio.sleep(0.2)  # a connection racing the exit still counts
                    nursery.cancel_scope.cancel()

                nursery.start_soon(take)
                nursery.start_soon(exited)
            if accepted:
                wire = Wire(accepted[0], self.log)
                self._wires.append(wire)
                # Each case gets its whole window from the moment the client connected.
                self.set_window(self.timeout)
                return wire
        if required:
            raise InfrastructureError(f"the client did not connect: {self.client_says()}")
        return None

    async def responder(self, **kwargs: Any) -> ResponderSession:
        """The client's connection, wrapped in our fault-injecting responder."""
        wire = await self.accept()
        assert wire is not None
        return ResponderSession(wire, identity=self.identity, **kwargs)

    def client_says(self) -> str:
        """The exit status and last line of stderr of the client, for reports."""
        status = "still running"
        if self._process is not None and self._process.returncode is not None:
            status = f"exit status {self._process.returncode}"
        self._stderr.seek(0)
        lines = self._stderr.read()[-2000:].decode(errors="replace").strip().splitlines()
        return f"client {status}" + (f", said {lines[-1]!r}" if lines else "")

    async def aclose(self) -> None:
        await super().aclose()
        for listener in self._listeners:
            await listener.aclose()
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            with trio.move_on_after(2):
                await self._process.wait()
            if self._process.returncode is None:
                self._process.kill()
                await self._process.wait()
        self._stderr.close()


class ResponderSession(Session):
    """Our side of the client's connection: a scriptable XX responder, then frames.

    The transport half (``seal``, ``send_plain``, ``next_frame`` …) is the initiator's, with
    the cipher states the other way round.

    Args:
        wire: the accepted TCP connection.
        identity: the identity we prove in message 2.
        settings: what our payload announces.
    """

    def __init__(self, wire: Wire, *, identity: Identity, settings: Settings | None = None) -> None:
        super().__init__(wire, settings=settings)
        self.identity = identity
        self.hs = HandshakeState(
            pattern="XX",
            initiator=False,
            prologue=PROLOGUE,
            static_key=self.static_private,
            random_bytes=os.urandom,
        )
        self.client_peer: PeerId | None = None
        self.client_settings: Settings | None = None

    @property
    def theirs(self) -> Settings:
        """The client's settings, from its message 3 (handshake first)."""
        assert self.client_settings is not None, "handshake first"
        return self.client_settings

    async def read_msg1(self, deadline: float) -> bool:
        """Read the client's message 1. Returns: False when it closed instead.

        Raises:
            TargetViolation: message 1 is not 32 bytes.
        """
        message = await self.wire.read_noise(deadline, "handshake message 1")
        if message is None:
            return False
        self.hs.read_message(message)
        return True

    def msg2(self, payload: bytes | None = None) -> bytes:
        """Our message 2 (``<- e, ee, s, es``) carrying ``payload`` (default: ours)."""
        return self.hs.write_message(self.payload() if payload is None else payload)

    def payload(self, **kwargs: Any) -> bytes:
        """Our payload for message 2; the fault arguments are ``Session.payload``'s."""
        if not kwargs:
            return make_payload(self.identity, self.static_public, self.settings)
        return super().payload(**kwargs)

    def low_order_msg2(self, point: bytes) -> bytes:
        """A message 2 whose ``e`` is the low-order ``point``, otherwise consistent.

        We hold no private key for ``point``; but X25519 of any key with a low-order point
        is all zeros, so the client that skips the check computes ``ee`` = 32 zero bytes,
        and so do we.  Everything after it is then encrypted exactly as that client expects,
        and only the all-zero check of §6.6 can stop it.
        """
        hs: Any = self.hs  # the core keeps its symmetric state private; we are its test
        sym = hs._sym
        sym.mix_hash(point)
        sym.mix_key(bytes(32))
        sealed_s: bytes = sym.encrypt_and_hash(self.static_public)
        sym.mix_key(hs._s.exchange(hs._re))
        sealed_payload: bytes = sym.encrypt_and_hash(self.payload())
        return point + sealed_s + sealed_payload

    async def read_msg3(self, deadline: float) -> bool:
        """Read and check the client's message 3; then the transport starts.

        Returns:
            False when the client closed instead of sending it.

        Raises:
            HandshakeFailed: message 3 does not authenticate or proves no identity.
        """
        message = await self.wire.read_noise(deadline, "handshake message 3")
        if message is None:
            return False
        payload = self.hs.read_message(message)
        remote_static = self.hs.remote_static
        assert remote_static is not None
        try:
            self.client_peer, self.client_settings = read_payload(payload, remote_static)
        except RemoteProtocolError as exc:
            raise HandshakeFailed(f"message 3 payload: {exc.msg}") from exc
        self.send_cs, self.recv_cs = self.hs.split()
        return True

    async def handshake_as_responder(self, ctx: ClientCaseContext) -> None:
        """A complete, well-formed handshake.

        Raises:
            InfrastructureError: the client closed before it ended.
            HandshakeFailed: its message 3 is bad.
        """
        deadline = ctx.deadline
        if not await self.read_msg1(deadline):
            raise InfrastructureError(f"the client closed before message 1 ({ctx.client_says()})")
        await self.send_noise(self.msg2(), note="msg2")
        if not await self.read_msg3(deadline):
            raise InfrastructureError(
                f"the client closed instead of sending message 3 ({ctx.client_says()})"
            )


def forged_static_signature(identity: Identity) -> bytes:
    """An identity signature over a Noise static key other than the one we send."""
    other = X25519PrivateKey.generate().public_key().public_bytes_raw()
    return identity.sign(SIG_PREFIX + other)


def peer_id_text(raw: bytes) -> str:
    """The §3.3 text form of any 32 bytes, valid key or not."""
    return base64.b32encode(raw).decode().rstrip("=").lower()


async def run_client_cases(
    cases: Iterable[Case],
    options: ClientOptions,
    *,
    deadline: float | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Run client ``cases`` one after the other (as ``run_cases`` does for a target)."""
    return await run_cases(
        cases, options, deadline=deadline, on_result=on_result, context=ClientCaseContext
    )


async def closes_without_msg3(ctx: ClientCaseContext, session: ResponderSession) -> Outcome:
    """The client must abort after our message 2: close without sending anything more."""
    try:
        rest = await session.wire.read_any(ctx.deadline, "the client to close")
    except WireTimeout:
        return ctx.violated(f"the client neither aborted nor went on ({ctx.client_says()})")
    if rest:
        return ctx.violated(f"the client went on: {len(rest)} bytes after our message 2")
    return ctx.passed(f"closed without message 3 ({ctx.client_says()})")
