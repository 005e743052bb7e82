"""DHT request and response bodies (SPEC.md §12.3).

The RPC layer hands the DHT a method name and a body that already passed the strict msgpack
profile.  This module checks the body against its schema and turns it into a message
object, or builds the body of an outgoing message.  Requests are spec nouns (``Ping``,
``FindNode``, ``Get``, ``Put``) with ``to_body()``; ``parse_request`` is the server's parser
and raises ``DhtRequestError`` (``BAD_REQUEST``, ``UNKNOWN_METHOD``); the ``parse_*_response``
functions are the client's and raise ``MalformedMessage``.  Records inside bodies are parsed
here but validated by the caller, which knows the time.

Unknown fields in a request body are ignored, so later versions can add optional fields.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from .._errors import ErrorCode, MalformedMessage
from ._errors import DhtRequestError
from ._ids import Contact, _parse_host
from ._records import Record, parse_record

__all__ = [
    "FIND_NODE",
    "GET",
    "MAX_RECORDS_PER_RESPONSE",
    "PING",
    "PUT",
    "FindNode",
    "Get",
    "K",
    "Listen",
    "Ping",
    "Put",
    "Request",
    "nodes_body",
    "parse_get_response",
    "parse_nodes_response",
    "parse_request",
]

PING = "dht.ping"
FIND_NODE = "dht.find_node"
GET = "dht.get"
PUT = "dht.put"

#: Replication parameter and the most contacts a response carries (Kademlia §2.2, libp2p).
K = 20
#: The most records one ``dht.get`` answer carries; equals the per-key subkey limit.
MAX_RECORDS_PER_RESPONSE = 128

Listen = tuple[str, int]


def _listen_body(listen: Listen | None) -> dict[str, Any]:
    return {} if listen is None else {"listen": [listen[0], listen[1]]}


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    """``dht.ping``: are you there?  Answered with an empty map."""

    method: ClassVar[str] = PING
    listen: Listen | None = None

    def to_body(self) -> dict[str, Any]:
        return _listen_body(self.listen)


@dataclass(frozen=True, slots=True, kw_only=True)
class FindNode:
    """``dht.find_node``: the k contacts you know closest to ``target``."""

    method: ClassVar[str] = FIND_NODE
    target: bytes
    listen: Listen | None = None

    def to_body(self) -> dict[str, Any]:
        return {"target": self.target, **_listen_body(self.listen)}


@dataclass(frozen=True, slots=True, kw_only=True)
class Get:
    """``dht.get``: your records under ``key`` and the k contacts closest to it."""

    method: ClassVar[str] = GET
    key: bytes
    listen: Listen | None = None

    def to_body(self) -> dict[str, Any]:
        return {"key": self.key, **_listen_body(self.listen)}


@dataclass(frozen=True, slots=True, kw_only=True)
class Put:
    """``dht.put``: store this signed record."""

    method: ClassVar[str] = PUT
    record: Record
    listen: Listen | None = None

    def to_body(self) -> dict[str, Any]:
        return {"record": self.record.to_wire(), **_listen_body(self.listen)}


Request = Ping | FindNode | Get | Put


def _bad(reason: str) -> DhtRequestError:
    return DhtRequestError(ErrorCode.BAD_REQUEST, reason)


def _parse_listen(body: dict[str, Any]) -> Listen | None:
    listen = body.get("listen")
    if listen is None:
        return None
    if not isinstance(listen, list) or len(listen) != 2:
        raise _bad("listen is [host, port]")
    host, port = listen
    try:
        _parse_host(host)
    except ValueError as exc:
        raise _bad(str(exc)) from exc
    if type(port) is not int or not 0 < port <= 0xFFFF:
        raise _bad("listen port is not in 1..65535")
    return (host, port)


def _bin32(body: dict[str, Any], name: str) -> bytes:
    value = body.get(name)
    if type(value) is not bytes or len(value) != 32:
        raise _bad(f"{name} must be 32 bytes")
    return value


def _parse_ping(body: dict[str, Any]) -> Ping:
    return Ping(listen=_parse_listen(body))


def _parse_find_node(body: dict[str, Any]) -> FindNode:
    return FindNode(target=_bin32(body, "target"), listen=_parse_listen(body))


def _parse_get(body: dict[str, Any]) -> Get:
    return Get(key=_bin32(body, "key"), listen=_parse_listen(body))


def _parse_put(body: dict[str, Any]) -> Put:
    if "record" not in body:
        raise _bad("record is missing")
    listen = _parse_listen(body)
    return Put(record=parse_record(body["record"]), listen=listen)


_PARSERS: dict[str, Callable[[dict[str, Any]], Request]] = {
    PING: _parse_ping,
    FIND_NODE: _parse_find_node,
    GET: _parse_get,
    PUT: _parse_put,
}


def parse_request(method: str, body: object) -> Request:
    """Check a request body against its schema (SPEC.md §12.3).

    Args:
        method: the RPC method name.
        body: the decoded request body.

    Returns:
        The request message.

    Raises:
        DhtRequestError: ``UNKNOWN_METHOD`` for a method the DHT does not serve,
            ``BAD_REQUEST`` for a body that breaks its schema.
        RecordRejected: ``RECORD_INVALID`` for a ``dht.put`` record that breaks its schema.
    """
    parser = _PARSERS.get(method)
    if parser is None:
        raise DhtRequestError(ErrorCode.UNKNOWN_METHOD, f"unknown method {method!r}")
    if not isinstance(body, dict):
        raise _bad("a request body is a map")
    return parser(body)


def nodes_body(contacts: list[Contact]) -> list[list[Any]]:
    """The wire list of contacts of a ``dht.find_node`` or ``dht.get`` answer."""
    return [contact.to_wire() for contact in contacts]


def _parse_contacts(body: object, known: dict[bytes, Contact] | None) -> list[Contact]:
    if not isinstance(body, dict):
        raise MalformedMessage("a response body is a map")
    nodes = body.get("nodes")
    if not isinstance(nodes, list) or len(nodes) > K:
        raise MalformedMessage(f"nodes must be a list of at most {K} contacts")
    contacts = []
    for item in nodes:
        # Contacts we already hold are not parsed again; a lookup sees each one many times.
        if known is not None and isinstance(item, list) and len(item) == 3:
            contact = known.get(item[0]) if type(item[0]) is bytes else None
            if contact is not None and contact.host == item[1] and contact.port == item[2]:
                contacts.append(contact)
                continue
        contacts.append(Contact.from_wire(item))
    return contacts


def parse_nodes_response(body: object, known: dict[bytes, Contact] | None = None) -> list[Contact]:
    """Parse a ``dht.find_node`` answer.

    Args:
        body: the decoded response body.
        known: contacts already parsed, by raw peer id, to reuse instead of parsing again.

    Returns:
        The contacts, in the order received.

    Raises:
        MalformedMessage: the body breaks the schema of SPEC.md §12.3.2.
    """
    return _parse_contacts(body, known)


def parse_get_response(
    body: object, known: dict[bytes, Contact] | None = None
) -> tuple[list[Contact], list[object]]:
    """Parse a ``dht.get`` answer; records are returned in wire form for the caller to check.

    Args:
        body: the decoded response body.
        known: contacts already parsed, by raw peer id.

    Returns:
        The contacts and the raw record objects.

    Raises:
        MalformedMessage: the body breaks the schema of SPEC.md §12.3.3.
    """
    contacts = _parse_contacts(body, known)
    assert isinstance(body, dict)  # checked by _parse_contacts
    records = body.get("records")
    if not isinstance(records, list) or len(records) > MAX_RECORDS_PER_RESPONSE:
        raise MalformedMessage(f"records must be a list of at most {MAX_RECORDS_PER_RESPONSE}")
    return contacts, records
