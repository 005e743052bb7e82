"""Node ids, contacts and the DHT message schemas (SPEC.md §12.1-§12.3)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from petalproto.core._errors import ErrorCode, MalformedMessage, RemoteProtocolError
from petalproto.core._msgpack import decode_strict, encode
from petalproto.core.dht import (
    FIND_NODE,
    GET,
    PING,
    PUT,
    Contact,
    DhtRequestError,
    FindNode,
    Get,
    Ping,
    Put,
    RecordRejected,
    Request,
    common_prefix_length,
    distance,
    key_to_id,
    node_id_of,
    nodes_body,
    parse_get_response,
    parse_nodes_response,
    parse_request,
)

from .factories import contact, dictionary, peer


def test_node_id_is_sha256_of_peer_id() -> None:
    p = peer(1)
    assert node_id_of(p) == int.from_bytes(hashlib.sha256(p.raw).digest(), "big")
    assert node_id_of(p) == p.node_id


def test_distance_and_common_prefix() -> None:
    assert distance(0b1010, 0b0110) == 0b1100
    assert common_prefix_length(0, 0) == 256
    assert common_prefix_length(0, 1) == 255
    assert common_prefix_length(0, 1 << 255) == 0
    assert key_to_id(b"\x80" + bytes(31)) == 1 << 255
    with pytest.raises(ValueError, match="32 bytes"):
        key_to_id(b"short")


def test_contact_validation_and_wire_form() -> None:
    c = contact(1)
    assert Contact.from_wire(c.to_wire()) == c
    assert c.node_id == peer(1).node_id
    assert c.addr == (4, int.from_bytes(bytes([20, 1, 0, 1]), "big"))
    mapped = Contact(peer_id=peer(1), host="::ffff:1.2.3.4", port=1)
    assert mapped.addr == (4, 0x01020304)
    assert Contact(peer_id=peer(1), host="::1", port=1).addr == (6, 1)
    with pytest.raises(TypeError):
        Contact(peer_id=b"x" * 32, host="1.2.3.4", port=1)  # type: ignore[arg-type]
    for host in ["example.org", "", "fe80::1%eth0", "1" * 46]:
        with pytest.raises(ValueError):
            Contact(peer_id=peer(1), host=host, port=1)
    for port in [0, 65536, True, "1"]:
        with pytest.raises(ValueError):
            Contact(peer_id=peer(1), host="1.2.3.4", port=port)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "wire",
    [
        None,
        [],
        [b"x", "1.2.3.4"],
        [bytes(32), "1.2.3.4", 1],
        ["x" * 32, "1.2.3.4", 1],
        [peer(1).raw, "localhost", 1],
        [peer(1).raw, "1.2.3.4", 0],
        [peer(1).raw, 5, 1],
    ],
)
def test_bad_contacts_are_malformed(wire: Any) -> None:
    with pytest.raises(MalformedMessage):
        Contact.from_wire(wire)


def test_request_round_trips() -> None:
    record = dictionary()
    messages: list[Request] = [
        Ping(),
        FindNode(target=bytes(32)),
        Get(key=bytes(32)),
        Put(record=record),
        Ping(listen=("1.2.3.4", 5)),
        FindNode(target=b"\x01" * 32, listen=("::1", 9)),
    ]
    for message in messages:
        body = decode_strict(encode(message.to_body()))
        assert parse_request(message.method, body) == message


def test_request_methods() -> None:
    assert (Ping.method, FindNode.method, Get.method, Put.method) == (PING, FIND_NODE, GET, PUT)
    assert FIND_NODE == "dht.find_node"


def test_unknown_fields_in_requests_are_ignored() -> None:
    assert parse_request(PING, {"future": 1}) == Ping()


@pytest.mark.parametrize(
    ("method", "body", "code"),
    [
        ("dht.nope", {}, ErrorCode.UNKNOWN_METHOD),
        (PING, [], ErrorCode.BAD_REQUEST),
        (PING, {"listen": "1.2.3.4:5"}, ErrorCode.BAD_REQUEST),
        (PING, {"listen": ["1.2.3.4"]}, ErrorCode.BAD_REQUEST),
        (PING, {"listen": ["example.org", 5]}, ErrorCode.BAD_REQUEST),
        (PING, {"listen": ["1.2.3.4", 0]}, ErrorCode.BAD_REQUEST),
        (PING, {"listen": ["1.2.3.4", "5"]}, ErrorCode.BAD_REQUEST),
        (FIND_NODE, {}, ErrorCode.BAD_REQUEST),
        (FIND_NODE, {"target": bytes(31)}, ErrorCode.BAD_REQUEST),
        (FIND_NODE, {"target": "x" * 32}, ErrorCode.BAD_REQUEST),
        (GET, {"key": bytes(33)}, ErrorCode.BAD_REQUEST),
        (PUT, {}, ErrorCode.BAD_REQUEST),
        (PUT, {"record": {}}, ErrorCode.RECORD_INVALID),
        (PUT, {"record": {}, "listen": 1}, ErrorCode.BAD_REQUEST),  # the body before the record
    ],
)
def test_bad_requests(method: str, body: Any, code: ErrorCode) -> None:
    with pytest.raises(DhtRequestError) as info:
        parse_request(method, body)
    assert info.value.code == code
    assert isinstance(info.value, RemoteProtocolError)
    assert info.value.reason


def test_put_record_errors_are_record_rejected() -> None:
    with pytest.raises(RecordRejected):
        parse_request(PUT, {"record": 5})


def test_nodes_response() -> None:
    contacts = [contact(i) for i in range(3)]
    body = decode_strict(encode({"nodes": nodes_body(contacts)}))
    assert parse_nodes_response(body) == contacts
    known = {c.peer_id.raw: c for c in contacts[:2]}
    parsed = parse_nodes_response(body, known)
    assert parsed == contacts
    assert parsed[0] is contacts[0]
    moved = {contacts[0].peer_id.raw: contact(0, port=9)}
    assert parse_nodes_response(body, moved)[0].port == 4001  # a stale cache entry is not used


def test_get_response() -> None:
    record = dictionary().to_wire()
    body = {"nodes": [contact(1).to_wire()], "records": [record]}
    assert parse_get_response(body) == ([contact(1)], [record])


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        {},
        {"nodes": 5},
        {"nodes": [contact(1).to_wire()] * 21},
        {"nodes": [[b"x"]]},
        {"nodes": [[5, "1.2.3.4", 1]]},
    ],
)
def test_bad_nodes_responses(body: Any) -> None:
    with pytest.raises(MalformedMessage):
        parse_nodes_response(body, {})


@pytest.mark.parametrize(
    "body",
    [
        {"nodes": []},
        {"nodes": [], "records": {}},
        {"nodes": [], "records": [None] * 129},
    ],
)
def test_bad_get_responses(body: Any) -> None:
    with pytest.raises(MalformedMessage):
        parse_get_response(body)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(st.sampled_from([PING, FIND_NODE, GET, PUT, "dht.other"]), _json)
def test_garbage_requests_raise_only_dht_request_errors(method: str, body: object) -> None:
    try:
        parse_request(method, body)
    except DhtRequestError:
        pass


@given(_json)
def test_garbage_responses_raise_only_malformed(body: object) -> None:
    for parse in (parse_nodes_response, parse_get_response):
        try:
            parse(body)
        except MalformedMessage:
            pass
