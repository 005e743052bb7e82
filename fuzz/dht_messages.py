"""Fuzz the DHT's receive path: request bodies, response bodies and signed records.

Run with atheris (``pip install atheris``)::

    python fuzz/dht_messages.py -max_len=8192

Without atheris the module still imports, and ``TestOneInput(data)`` can be called directly
(the tests do).  The rule checked is the one of STYLE.md §3: garbage from a peer may only
raise the typed errors of the layer that parses it (``MalformedMessage`` for msgpack and
responses, ``DhtRequestError`` for requests, ``RecordRejected`` for records), and the
state machines never raise at all because of a peer's answer.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys

try:
    import atheris
except ImportError:  # pragma: no cover - atheris is optional
    atheris = None

# Instrument our code for coverage feedback only when fuzzing, not when tests import this.
_FUZZING = __name__ == "__main__" and atheris is not None
with atheris.instrument_imports() if _FUZZING else contextlib.nullcontext():
    from petalproto.core._errors import MalformedMessage
    from petalproto.core._identity import Identity
    from petalproto.core._msgpack import decode_strict
    from petalproto.core.dht import (
        FIND_NODE,
        GET,
        PING,
        PUT,
        Contact,
        DhtNode,
        DhtRequestError,
        Lookup,
        RecordRejected,
        parse_get_response,
        parse_nodes_response,
        parse_record,
        parse_request,
        validate_record,
    )

_SERVER = Identity.from_seed(hashlib.sha256(b"fuzz-server").digest())
_CLIENT = Identity.from_seed(hashlib.sha256(b"fuzz-client").digest())
_CLIENT_CONTACT = Contact(peer_id=_CLIENT.peer_id, host="192.0.2.1", port=4001)
_NOW = 1_700_000_000.0


def _server() -> DhtNode:
    return DhtNode(_SERVER.peer_id, listen=("192.0.2.2", 4001), random_bytes=bytes, now=0.0)


def _check_request(obj: object) -> None:
    node = _server()
    for method in (PING, FIND_NODE, GET, PUT, "dht.unknown"):
        try:
            parse_request(method, obj)
        except DhtRequestError:
            pass
        try:
            node.handle_request(_CLIENT.peer_id, method, obj, 1.0)
        except DhtRequestError:
            pass


def _check_response(obj: object) -> None:
    for parse in (parse_nodes_response, parse_get_response):
        try:
            parse(obj)
        except MalformedMessage:
            pass
    for value in (False, True):
        lookup = Lookup(b"\x00" * 32, [_CLIENT_CONTACT], value=value, clock_offset=_NOW)
        lookup.start(0.0)
        lookup.on_response(_CLIENT.peer_id, obj, 0.5)  # never raises: misbehaviour is data
        lookup.result()


def _check_record(obj: object) -> None:
    try:
        record = parse_record(obj)
    except RecordRejected:
        return
    try:
        validate_record(record, _NOW)
    except RecordRejected:
        pass


def TestOneInput(data: bytes) -> None:  # the name atheris and libFuzzer expect
    """One fuzz case: ``data`` is a msgpack object received from a peer."""
    try:
        obj = decode_strict(data)
    except MalformedMessage:
        return
    _check_request(obj)
    _check_response(obj)
    _check_record(obj)
    if isinstance(obj, dict):
        _check_record(obj.get("record"))


if __name__ == "__main__":  # pragma: no cover - manual fuzzing
    if atheris is None:
        sys.exit("atheris is not installed")
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
