"""Static checks of the public API's types (run by mypy --strict; also imported by pytest)."""

from __future__ import annotations

import os
from typing import assert_type

from petalproto.core import (
    Address,
    Config,
    Connection,
    ConnState,
    ErrorCode,
    Event,
    Identity,
    Message,
    Open,
    PeerId,
    Role,
    decode_strict,
    encode,
)
from petalproto.core.dht import Record, make_named_record
from petalproto.net import Node, RpcError


def test_core_types() -> None:
    identity = Identity.from_seed(os.urandom(32))
    assert_type(identity.peer_id, PeerId)
    assert_type(identity.sign(b"x"), bytes)
    assert_type(PeerId.from_text(str(identity.peer_id)), PeerId)
    assert_type(Address.parse(f"{identity.peer_id}@127.0.0.1:1"), Address)
    conn = Connection(Role.INITIATOR, identity=identity, random_bytes=os.urandom, config=Config())
    conn.start(0.0)
    assert_type(conn.data_to_send(), bytes)
    assert_type(conn.state, ConnState)
    assert_type(conn.next_deadline(), float | None)
    assert_type(conn.handle_timer(0.0), list[Event])
    assert_type(encode({"a": 1}), bytes)
    assert_type(Open(stream_id=1, method="ping"), Open)
    assert_type(Message(stream_id=1, body={}).end_stream, bool)
    assert_type(int(ErrorCode.BAD_REQUEST), int)
    decode_strict(encode({"a": 1}))


def test_dht_and_net_types() -> None:
    identity = Identity.from_seed(os.urandom(32))
    record = make_named_record(identity, b"name", {"v": 1}, seq=1, expires=2**31)
    assert_type(record, Record)
    assert_type(record.seq, int)
    assert_type(Node(identity).router.methods, list[str])
    assert_type(RpcError(ErrorCode.CANCEL).code, ErrorCode)
