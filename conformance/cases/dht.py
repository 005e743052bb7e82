"""The DHT's calls, contacts and routing (SPEC.md §12.2, §12.3, §12.4).

Every case first checks that the target serves the DHT (``dht_case``).  Cases that judge a
list of contacts first introduce more than k fresh identities to the target as servers, so
that its answers are full.  The record and storage cases are in ``dht_records``.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from petalproto.core import ErrorCode

from .._harness import QUOTE_GAP, CaseContext, Outcome, case
from ._dht_common import (
    DhtClient,
    check_contacts,
    dht_case,
    expect_answer,
    expect_code,
    node_id,
    parse_contacts,
    populate,
)

R_12_2_1 = "A contact's host MUST be an IP literal; DNS names never appear in DHT messages."
R_12_2_3 = (
    "A node MUST NOT add a peer to its routing table because of a request that carried no `listen`."
)
R_12_3_1 = "A receiver MUST ignore fields of a request body that this section does not define."
R_12_3_2 = (
    "A request body that is not a map, lacks a required field, or has a field of the wrong "
    "type or size MUST be answered with the error `BAD_REQUEST`."
)
R_12_3_3 = (
    "A method name starting with `dht.` that this section does not define MUST be answered "
    "with `UNKNOWN_METHOD` (this is the RPC layer's rule for every unknown method, §10)."
)
R_12_3_4 = (
    "The optional `listen` field of every request is `[host str, port int]` with the rules "
    "of §12.2; a malformed `listen` MUST be answered with `BAD_REQUEST`."
)
R_12_3_1_1 = "A server MUST answer `dht.ping` with an empty map."
R_12_3_2_1 = "A server MUST answer with at most k = 20 contacts."
R_12_3_2_2 = (
    "The contacts MUST be sorted by ascending XOR distance between their node id and "
    "`target`, and MUST NOT contain the same peer id twice."
)
R_12_3_2_4 = (
    "A `target` that is not exactly 32 bytes of type bin MUST be answered with `BAD_REQUEST`."
)
R_12_3_2_5 = (
    "The first contact MUST be the closest to `target` of all contacts in the server's "
    "routing table other than the requester, so an answer is empty only when the table "
    "holds no other contact."
)
R_12_3_3_1 = "`nodes` follows every rule of §12.3.2 with `key` as the target."
R_12_3_3_4 = "A `key` that is not exactly 32 bytes of type bin MUST be answered with `BAD_REQUEST`."
R_12_4_1 = (
    "A node SHOULD keep up to k = 20 contacts per bucket, one bucket per CPL 0..255 with its "
    "own node id (libp2p kad-dht), and MUST NOT store its own id."
)

#: A method of the ``dht.`` namespace that §12.3 does not define.
UNKNOWN_DHT_METHOD = "dht.conformance_unknown"
_KEY = os.urandom(32)


async def _contacts_answer(
    ctx: CaseContext, dht: DhtClient, method: str, target: bytes
) -> list[tuple[bytes, str, int]] | Outcome:
    """Fill the target's table, then ask for the contacts closest to ``target``."""
    await populate(ctx)
    field = "key" if method == "dht.get" else "target"
    reply = await dht.call(method, {field: target})
    if (bad := expect_answer(ctx, reply, method)) is not None:
        return bad
    contacts = parse_contacts(reply.body)
    if isinstance(contacts, str):
        return ctx.violated(contacts)
    return contacts


# §12.2 ----------------------------------------------------------------------------------------


@dht_case(
    "12.2/1",
    description="dht.find_node after more than k servers introduced themselves",
    requirement=R_12_2_1,
    expected="every contact's host is an IPv4 or IPv6 address literal",
)
async def contact_hosts(ctx: CaseContext, dht: DhtClient) -> Outcome:
    contacts = await _contacts_answer(ctx, dht, "dht.find_node", os.urandom(32))
    if isinstance(contacts, Outcome):
        return contacts
    for _, host, _ in contacts:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return ctx.violated(f"contact host {host!r} is not an IP literal")
    return ctx.passed(f"{len(contacts)} contacts, all with IP literal hosts")


@dht_case(
    "12.2/2",
    description="a client (no listen) calls dht.find_node; another connection then looks "
    "up the client's node id",
    requirement=R_12_2_3,
    expected="the client's peer id is not among the contacts",
)
async def clients_stay_out(ctx: CaseContext, dht: DhtClient) -> Outcome:
    first = await dht.find_node(os.urandom(32))
    if (bad := expect_answer(ctx, first, "dht.find_node")) is not None:
        return bad
    other = await DhtClient.open(ctx)
    target = node_id(dht.peer_id.raw).to_bytes(32, "big")
    reply = await other.find_node(target)
    if (bad := expect_answer(ctx, reply, "dht.find_node")) is not None:
        return bad
    contacts = parse_contacts(reply.body)
    if isinstance(contacts, str):
        return ctx.violated(contacts)
    if any(raw == dht.peer_id.raw for raw, _, _ in contacts):
        return ctx.violated("the client, which sent no listen, is in the routing table")
    return ctx.passed(f"{len(contacts)} contacts, the client not among them")


# §12.3 ----------------------------------------------------------------------------------------


@dht_case(
    "12.3/1",
    description="dht.find_node whose body carries fields §12.3 does not define",
    requirement=R_12_3_1,
    expected="an answer with nodes",
)
async def unknown_fields(ctx: CaseContext, dht: DhtClient) -> Outcome:
    body = {"target": os.urandom(32), "future": {"x": [1, 2.5, None, b"\x00"]}, "z": 7}
    reply = await dht.call("dht.find_node", body)
    if (bad := expect_answer(ctx, reply, "dht.find_node")) is not None:
        return bad
    return ctx.passed(reply.describe())


_BAD_BODIES: list[tuple[str, str, Any]] = [
    ("dht.find_node", "an array, not a map", [os.urandom(32)]),
    ("dht.get", "an integer, not a map", 7),
    ("dht.find_node", "a map without target", {"key": os.urandom(32)}),
    ("dht.get", "a map without key", {"target": os.urandom(32)}),
    ("dht.ping", "nil", None),
]


def _register_bad_body(ordinal: int, method: str, what: str, body: Any) -> None:
    async def run(ctx: CaseContext, dht: DhtClient) -> Outcome:
        if body is None:
            reply = await dht.call(method, raw_body=b"\xc0")
        else:
            reply = await dht.call(method, body)
        return expect_code(ctx, reply, ErrorCode.BAD_REQUEST)

    dht_case(
        f"12.3/{ordinal}",
        description=f"{method} whose body is {what}",
        requirement=R_12_3_2,
        expected="RESET(BAD_REQUEST)",
    )(run)


for _i, (_method, _what, _body) in enumerate(_BAD_BODIES):
    _register_bad_body(2 + _i, _method, _what, _body)


@case(
    "12.3/7",
    description=f"a call of {UNKNOWN_DHT_METHOD!r}",
    requirement=R_12_3_3,
    expected="RESET(UNKNOWN_METHOD)",
)
async def unknown_dht_method(ctx: CaseContext) -> Outcome:
    dht = await DhtClient.open(ctx)
    return expect_code(ctx, await dht.call(UNKNOWN_DHT_METHOD, {}), ErrorCode.UNKNOWN_METHOD)


_BAD_LISTENS: list[tuple[str, Any]] = [
    ("a DNS name as host", ["localhost", 4001]),
    ("port 0", ["127.0.0.1", 0]),
    ("one element", ["127.0.0.1"]),
    ("a string", "127.0.0.1:4001"),
]


def _register_bad_listen(ordinal: int, what: str, listen: Any) -> None:
    async def run(ctx: CaseContext, dht: DhtClient) -> Outcome:
        reply = await dht.call("dht.ping", {"listen": listen})
        return expect_code(ctx, reply, ErrorCode.BAD_REQUEST)

    dht_case(
        f"12.3/{ordinal}",
        description=f"dht.ping whose listen is {what}: {listen!r}",
        requirement=R_12_3_4 + QUOTE_GAP + R_12_2_1,
        expected="RESET(BAD_REQUEST)",
    )(run)


for _i, (_what, _listen) in enumerate(_BAD_LISTENS):
    _register_bad_listen(8 + _i, _what, _listen)


# §12.3.1, §12.3.2, §12.3.3 --------------------------------------------------------------------


@dht_case(
    "12.3.1/1",
    description="dht.ping with an empty map, then with a valid listen",
    requirement=R_12_3_1_1,
    expected="an empty map, both times",
)
async def ping_answer(ctx: CaseContext, dht: DhtClient) -> Outcome:
    for body in ({}, {"listen": ["127.0.0.1", 4001]}):
        reply = await dht.call("dht.ping", body)
        if reply.kind != "answer" or reply.body != {}:
            return ctx.violated(f"dht.ping {body!r}: {reply.describe()}")
    return ctx.passed("two empty maps")


@dht_case(
    "12.3.2/1",
    description="dht.find_node after more than k servers introduced themselves",
    requirement=R_12_3_2_1,
    expected="at most 20 contacts",
)
async def find_node_count(ctx: CaseContext, dht: DhtClient) -> Outcome:
    contacts = await _contacts_answer(ctx, dht, "dht.find_node", os.urandom(32))
    if isinstance(contacts, Outcome):
        return contacts
    if len(contacts) > 20:
        return ctx.violated(f"{len(contacts)} contacts")
    return ctx.passed(f"{len(contacts)} contacts")


@dht_case(
    "12.3.2/2",
    description="dht.find_node after more than k servers introduced themselves",
    requirement=R_12_3_2_2,
    expected="contacts sorted by XOR distance to the target, no peer id twice",
)
async def find_node_order(ctx: CaseContext, dht: DhtClient) -> Outcome:
    target = os.urandom(32)
    contacts = await _contacts_answer(ctx, dht, "dht.find_node", target)
    if isinstance(contacts, Outcome):
        return contacts
    problem = check_contacts(contacts, target, count=False)
    if problem:
        return ctx.violated(problem)
    return ctx.passed(f"{len(contacts)} contacts in order")


_BAD_TARGETS: list[tuple[str, Any]] = [
    ("31 bytes", os.urandom(31)),
    ("33 bytes", os.urandom(33)),
    ("a 32-character str", "x" * 32),
    ("an integer", 7),
]


def _register_bad_id(
    section: str, method: str, field: str, *, ordinal: int, what: str, value: Any
) -> None:
    async def run(ctx: CaseContext, dht: DhtClient) -> Outcome:
        reply = await dht.call(method, {field: value})
        return expect_code(ctx, reply, ErrorCode.BAD_REQUEST)

    dht_case(
        f"{section}/{ordinal}",
        description=f"{method} whose {field} is {what}",
        requirement=R_12_3_2_4 if field == "target" else R_12_3_3_4,
        expected="RESET(BAD_REQUEST)",
    )(run)


for _i, (_what, _value) in enumerate(_BAD_TARGETS):
    _register_bad_id("12.3.2", "dht.find_node", "target", ordinal=3 + _i, what=_what, value=_value)
    _register_bad_id("12.3.3", "dht.get", "key", ordinal=4 + _i, what=_what, value=_value)


@dht_case(
    "12.3.3/1",
    description="dht.get after more than k servers introduced themselves",
    requirement=R_12_3_3_1 + QUOTE_GAP + R_12_3_2_1 + QUOTE_GAP + R_12_3_2_2,
    expected="at most 20 contacts, sorted by XOR distance to the key, no peer id twice",
)
async def get_nodes(ctx: CaseContext, dht: DhtClient) -> Outcome:
    contacts = await _contacts_answer(ctx, dht, "dht.get", _KEY)
    if isinstance(contacts, Outcome):
        return contacts
    problem = check_contacts(contacts, _KEY)
    if problem:
        return ctx.violated(problem)
    return ctx.passed(f"{len(contacts)} contacts in order")


async def _nodes_for(dht: DhtClient, method: str, target: bytes) -> list[bytes] | str:
    """The peer ids the target answers for ``target``, or what is wrong with the answer."""
    field = "key" if method == "dht.get" else "target"
    reply = await dht.call(method, {field: target})
    if reply.kind != "answer" or not isinstance(reply.body, dict):
        return f"{method}: expected an answer (a map), got {reply.describe()}"
    contacts = parse_contacts(reply.body)
    if isinstance(contacts, str):
        return contacts
    problem = check_contacts(contacts, target)
    return problem or [raw for raw, _, _ in contacts]


async def _closest_first(ctx: CaseContext, dht: DhtClient, method: str) -> Outcome:
    """Introduce more than k servers, then ask for the node id of each, three times over.

    A server the target names in the first and the third pass it holds throughout the
    second (evictions need new contacts, and none arrive meanwhile), and in the second pass
    the answer for that server's own node id (distance 0) must start with it.
    """
    servers = await populate(ctx)
    ctx.set_window(max(ctx.timeout, 0.05 * len(servers) * 3 + 2))
    targets = [node_id(raw).to_bytes(32, "big") for raw in servers]
    passes: list[list[list[bytes]]] = []
    for _ in range(3):
        answers = []
        for target in targets:
            nodes = await _nodes_for(dht, method, target)
            if isinstance(nodes, str):
                return ctx.violated(nodes)
            answers.append(nodes)
        passes.append(answers)
    before = {raw for nodes in passes[0] for raw in nodes}
    after = {raw for nodes in passes[2] for raw in nodes}
    held = before & after
    if not before | after:
        return ctx.violated(
            f"{len(servers)} servers introduced themselves with listen, and every one of "
            f"{3 * len(targets)} answers is empty"
        )
    for raw, nodes in zip(servers, passes[1], strict=True):
        if raw in held and nodes[:1] != [raw]:
            first = nodes[0].hex()[:16] if nodes else "nothing"
            return ctx.violated(
                f"the target names {raw.hex()[:16]}… in other answers, but its answer for "
                f"that peer's own node id starts with {first}"
            )
    ours = sum(raw in held for raw in servers)
    return ctx.passed(f"{ours} of {len(servers)} servers held; each first for its own id")


@dht_case(
    "12.3.2/7",
    description="more than k servers introduce themselves; dht.find_node for the node id "
    "of each, in three passes",
    requirement=R_12_3_2_5,
    expected="every server the target names in other answers comes first in the answer for "
    "its own node id; not every answer is empty",
    timeout=15.0,
)
async def find_node_closest(ctx: CaseContext, dht: DhtClient) -> Outcome:
    return await _closest_first(ctx, dht, "dht.find_node")


@dht_case(
    "12.3.3/8",
    description="more than k servers introduce themselves; dht.get for the node id of "
    "each, in three passes",
    requirement=R_12_3_3_1 + QUOTE_GAP + R_12_3_2_5,
    expected="nodes: every server the target names in other answers comes first in the "
    "answer for its own node id; not every answer is empty",
    timeout=15.0,
)
async def get_closest(ctx: CaseContext, dht: DhtClient) -> Outcome:
    return await _closest_first(ctx, dht, "dht.get")


# §12.4 ----------------------------------------------------------------------------------------


@dht_case(
    "12.4/1",
    description="dht.find_node for the target's own node id, after more than k servers "
    "introduced themselves",
    requirement=R_12_4_1,
    expected="the target's own peer id is not among the contacts",
)
async def own_id(ctx: CaseContext, dht: DhtClient) -> Outcome:
    target = node_id(dht.target_id.raw).to_bytes(32, "big")
    contacts = await _contacts_answer(ctx, dht, "dht.find_node", target)
    if isinstance(contacts, Outcome):
        return contacts
    if any(raw == dht.target_id.raw for raw, _, _ in contacts):
        return ctx.violated("the target lists itself")
    return ctx.passed(f"{len(contacts)} contacts, the target not among them")
