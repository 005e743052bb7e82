"""A deterministic in-memory network for the sans-IO DHT (no sockets, simulated time).

``DhtSim`` runs N ``DhtNode``s of ``petalproto.core.dht`` over a simulated network.  Every
request travels as real msgpack bytes through ``encode`` and ``decode_strict``, takes a
random round-trip time drawn from a seeded ``random.Random``, and never arrives when its
target is dead: the caller learns that only from its own timers.  Nodes can be

* **dead but still listed**: they stay in other nodes' routing tables (churn since the
  last refresh) and never answer;
* **adversaries**: they collude, answering every ``dht.find_node`` and ``dht.get`` with the
  adversaries closest to the target, the strongest eclipse attempt available to them.

Two ways to fill routing tables:

* ``join_all()``: each node bootstraps through an earlier node with ``DhtNode.bootstrap``
  (a self-lookup plus a refresh of its farther buckets) and the network runs until the
  join finishes.  Tables fill only through traffic, as in a real network.
* ``fill_tables()``: for speed at 10,000 nodes, each node's table is offered, bucket by
  bucket, real contacts drawn at random from that bucket's id range, through the table's
  public ``observe``; the table applies its own size, old-node and diversity rules.

Two ways to run a lookup:

* ``run_operation()`` drives whole ``DhtNode`` operations (find, get, put) through the
  event loop; the requests name the sender's listening address, so receivers learn it.
* ``lookup()`` drives one ``Lookup`` from a node's routing table as a client (no listening
  address), which leaves every table unchanged: lookups can be repeated on the same
  network state, as the benchmark does for each scenario.
"""

from __future__ import annotations

import bisect
import heapq
import ipaddress
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from petalproto.core._errors import ErrorCode
from petalproto.core._identity import Identity, PeerId
from petalproto.core._msgpack import decode_strict, encode
from petalproto.core.dht import (
    Contact,
    DhtConfig,
    DhtEvent,
    DhtNode,
    DhtRequestError,
    FindNode,
    Get,
    K,
    Lookup,
    LookupResult,
    PeerMisbehaved,
    SendRequest,
    nodes_body,
)

__all__ = ["DhtSim", "SimLookup", "SimNode"]

_PORT = 4001


@dataclass(slots=True, eq=False)
class SimNode:
    """One simulated peer."""

    index: int
    identity: Identity
    contact: Contact
    node: DhtNode
    alive: bool = True
    adversary: bool = False
    events: list[DhtEvent] = field(default_factory=list)

    @property
    def peer_id(self) -> PeerId:
        return self.identity.peer_id


@dataclass(frozen=True, slots=True, kw_only=True)
class SimLookup:
    """The outcome of ``DhtSim.lookup``: the result, the misbehaving peers it reported and
    the simulated seconds it took."""

    result: LookupResult
    misbehaved: tuple[PeerMisbehaved, ...]
    elapsed: float


def _public_hosts(rng: random.Random, n: int) -> list[str]:
    hosts: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        ip = ipaddress.IPv4Address(rng.randrange(1 << 24, 224 << 24))
        host = str(ip)
        if ip.is_global and host not in hosts:
            hosts.add(host)
            out.append(host)
    return out


class DhtSim:
    """N simulated DHT nodes on a lossless network with random latency.

    Args:
        n: number of nodes.
        seed: seed of the one ``random.Random`` behind keys, addresses, latency and choices.
        config: node configuration; defaults to ``DhtConfig()``.
        rtt: range of round-trip times in seconds, drawn uniformly per request.
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        config: DhtConfig | None = None,
        rtt: tuple[float, float] = (0.02, 0.2),
    ) -> None:
        self.rng = random.Random(seed)
        self.config = config or DhtConfig()
        self.rtt = rtt
        self.now = 0.0
        self.nodes: list[SimNode] = []
        self._by_raw: dict[bytes, SimNode] = {}
        for host in _public_hosts(self.rng, n):
            identity = Identity.from_seed(self.rng.randbytes(32))
            contact = Contact(peer_id=identity.peer_id, host=host, port=_PORT)
            node = DhtNode(
                identity.peer_id,
                listen=(host, _PORT),
                random_bytes=self.rng.randbytes,
                now=0.0,
                config=self.config,
            )
            sim_node = SimNode(len(self.nodes), identity, contact, node)
            self.nodes.append(sim_node)
            self._by_raw[identity.peer_id.raw] = sim_node
        self._sorted = sorted(self.nodes, key=lambda s: s.contact.node_id)
        self._sorted_ids = [s.contact.node_id for s in self._sorted]
        self._adversary_ids: list[int] = []
        self._adversary_cache: tuple[bytes, list[list[Any]]] | None = None
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._timer_at: dict[int, float] = {}
        self._contact_cache: dict[bytes, Contact] = {}  # shared parse cache of lookup()

    def node_of(self, peer_id: PeerId) -> SimNode:
        """The simulated node of ``peer_id``."""
        return self._by_raw[peer_id.raw]

    # Building the network -----------------------------------------------------------------

    def fill_tables(self, *, offers_per_bucket: int | None = None) -> None:
        """Offer every node real contacts for each of its buckets through ``observe``.

        Args:
            offers_per_bucket: contacts offered per bucket (default: 1.5 k); a full bucket
                pings its oldest contact, which answers, so old contacts stay.
        """
        offers = offers_per_bucket or self.config.routing.k + self.config.routing.k // 2
        for sim_node in self.nodes:
            table = sim_node.node.table
            our = sim_node.contact.node_id
            for index in range(256):
                shift = 255 - index
                same = (our >> (shift + 1)) << (shift + 1)  # ids sharing our first index bits
                lo = bisect.bisect_left(self._sorted_ids, same)
                hi = bisect.bisect_left(self._sorted_ids, same + (2 << shift))
                if hi - lo <= 1:
                    break  # only ourselves left this deep
                low = ((our >> shift) ^ 1) << shift  # ids in bucket `index`
                lo = bisect.bisect_left(self._sorted_ids, low)
                hi = bisect.bisect_left(self._sorted_ids, low + (1 << shift))
                if lo == hi:
                    continue
                picks = self.rng.sample(range(lo, hi), min(offers, hi - lo))
                for i in picks:
                    for ping in table.observe(self._sorted[i].contact, self.now):
                        table.observe(ping.peer, self.now)  # everyone is alive here

    def join_all(self, *, max_time_per_join: float = 60.0) -> None:
        """Let the nodes join one by one, each through a random earlier node.

        Each join runs ``DhtNode.bootstrap`` and the network until that node's
        bootstrap lookup and its bucket refreshes are answered.
        """
        for sim_node in self.nodes[1:]:
            seed = self.nodes[self.rng.randrange(sim_node.index)].contact

            def start(node: DhtNode, now: float, seed: Contact = seed) -> int:
                return node.bootstrap([seed], now)

            self.run_operation(sim_node, start, max_time=max_time_per_join)
            self.run(until=self.now + 5.0)  # let the bucket refreshes finish

    def set_dead(self, fraction: float, *, keep: Sequence[SimNode] = ()) -> list[SimNode]:
        """Kill a random ``fraction`` of the nodes (they stay in tables), reviving the rest.

        Returns:
            The dead nodes.
        """
        return self._mark(fraction, keep, "alive", False)

    def set_adversaries(self, fraction: float, *, keep: Sequence[SimNode] = ()) -> list[SimNode]:
        """Make a random ``fraction`` of the nodes colluding adversaries.

        Returns:
            The adversaries.
        """
        chosen = self._mark(fraction, keep, "adversary", True)
        self._adversary_ids = sorted(s.contact.node_id for s in chosen)
        self._adversary_cache = None
        return chosen

    def _mark(
        self, fraction: float, keep: Sequence[SimNode], attr: str, value: bool
    ) -> list[SimNode]:
        for sim_node in self.nodes:
            setattr(sim_node, attr, not value)
        spared = {s.index for s in keep}
        pool = [s for s in self.nodes if s.index not in spared]
        chosen = self.rng.sample(pool, round(fraction * len(self.nodes)))
        for sim_node in chosen:
            setattr(sim_node, attr, value)
        return chosen

    def closest_live_honest(self, target: bytes) -> SimNode:
        """The node a perfect lookup for ``target`` finds: the closest live honest one."""
        target_id = int.from_bytes(target, "big")
        good = (s for s in self.nodes if s.alive and not s.adversary)
        return min(good, key=lambda s: s.contact.node_id ^ target_id)

    # Answers ------------------------------------------------------------------------------

    def _adversary_answer(self, remote: SimNode, target: bytes) -> list[list[Any]]:
        if self._adversary_cache is None or self._adversary_cache[0] != target:
            target_id = int.from_bytes(target, "big")
            ids = heapq.nsmallest(K + 1, self._adversary_ids, key=target_id.__xor__)
            contacts = [self._sorted[bisect.bisect_left(self._sorted_ids, i)].contact for i in ids]
            self._adversary_cache = (target, nodes_body(contacts))
        return [c for c in self._adversary_cache[1] if c[0] != remote.peer_id.raw][:K]

    def _answer(
        self, remote: SimNode, sender: PeerId, request: SendRequest, now: float
    ) -> tuple[bool, Any]:
        """(ok, body) for a successful answer, (False, ErrorCode) for an error answer."""
        message = request.message
        if remote.adversary and isinstance(message, FindNode | Get):
            target = message.target if isinstance(message, FindNode) else message.key
            nodes = self._adversary_answer(remote, target)
            body: dict[str, Any] = {"nodes": nodes}
            if isinstance(message, Get):
                body["records"] = []
            return True, decode_strict(encode(body))
        wire = decode_strict(encode(message.to_body()))
        try:
            answer = remote.node.handle_request(sender, message.method, wire, now)
        except DhtRequestError as exc:
            return False, exc.code
        return True, decode_strict(encode(answer))

    # The fast lookup engine ---------------------------------------------------------------

    def lookup(
        self, source: SimNode, target: bytes, *, value: bool = False, disjoint_paths: int = 1
    ) -> SimLookup:
        """Run one client lookup from ``source``'s routing table to completion.

        Tables are not changed (the requests carry no listening address).

        Returns:
            The result, every ``PeerMisbehaved`` the lookup reported, and the time taken.
        """
        config = self.config
        seeds = source.node.table.closest(int.from_bytes(target, "big"), config.routing.k)
        lookup = Lookup(
            target,
            seeds,
            our_id=source.peer_id,
            value=value,
            k=config.routing.k,
            alpha=config.alpha,
            disjoint_paths=disjoint_paths,
            request_timeout=config.request_timeout,
            clock_offset=config.clock_offset,
            contact_cache=self._contact_cache,
        )
        arrivals: list[tuple[float, int, PeerId, bool, Any]] = []
        misbehaved: list[PeerMisbehaved] = []
        now = started = self.now
        commands = lookup.start(now)
        while True:
            for command in commands:
                if isinstance(command, PeerMisbehaved):
                    misbehaved.append(command)
                    continue
                remote = self._by_raw[command.peer.peer_id.raw]
                if remote.alive:
                    ok, body = self._answer(remote, source.peer_id, command, now)
                    self._seq += 1
                    at = now + self.rng.uniform(*self.rtt)
                    heapq.heappush(arrivals, (at, self._seq, remote.peer_id, ok, body))
            if lookup.done:
                return SimLookup(
                    result=lookup.result(), misbehaved=tuple(misbehaved), elapsed=now - started
                )
            deadline = lookup.next_deadline()
            timer_at = math.inf if deadline is None else deadline
            if arrivals and arrivals[0][0] <= timer_at:
                now, _, peer, ok, body = heapq.heappop(arrivals)
                commands = (
                    lookup.on_response(peer, body, now) if ok else lookup.on_failure(peer, now)
                )
            else:
                assert deadline is not None, "a lookup that is not done waits for something"
                now = deadline
                commands = lookup.handle_timer(now)

    # The full event loop ------------------------------------------------------------------

    def _schedule(self, at: float, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, action))

    def _after_input(self, sim_node: SimNode, events: list[DhtEvent]) -> None:
        sim_node.events += events
        for request in sim_node.node.requests_to_send():
            self._deliver(sim_node, request)
        deadline = sim_node.node.next_deadline()
        if deadline is not None and deadline < self._timer_at.get(sim_node.index, math.inf):
            self._timer_at[sim_node.index] = deadline
            self._schedule(max(deadline, self.now), lambda: self._fire(sim_node))

    def _fire(self, sim_node: SimNode) -> None:
        self._timer_at.pop(sim_node.index, None)
        self._after_input(sim_node, sim_node.node.handle_timer(self.now))

    def _deliver(self, sender: SimNode, request: SendRequest) -> None:
        remote = self._by_raw.get(request.peer.peer_id.raw)
        rid = request.request_id
        if remote is None or not remote.alive:
            self._schedule(
                self.now + request.timeout,
                lambda: self._after_input(sender, sender.node.on_failure(rid, self.now)),
            )
            return
        rtt = self.rng.uniform(*self.rtt)

        def arrive() -> None:
            ok, body = self._answer(remote, sender.peer_id, request, self.now)
            self._after_input(remote, [])

            def back() -> None:
                if ok:
                    events = sender.node.on_response(rid, body, self.now)
                else:
                    code: ErrorCode = body
                    events = sender.node.on_failure(rid, self.now, code=code)
                self._after_input(sender, events)

            self._schedule(self.now + rtt / 2, back)

        self._schedule(self.now + rtt / 2, arrive)

    def run(self, *, until: float) -> None:
        """Process every event up to simulated time ``until``."""
        while self._queue and self._queue[0][0] <= until:
            at, _, action = heapq.heappop(self._queue)
            self.now = max(self.now, at)
            action()
        self.now = max(self.now, until)

    def run_operation(
        self, sim_node: SimNode, start: Callable[[DhtNode, float], int], *, max_time: float = 60.0
    ) -> DhtEvent | None:
        """Start an operation on ``sim_node`` and run the network until it finishes.

        Args:
            sim_node: where to start it.
            start: called with the node and the time; returns the operation id.
            max_time: simulated seconds to wait at most.

        Returns:
            The operation's finishing event, or None if it did not finish in time.
        """
        op_id = start(sim_node.node, self.now)
        self._after_input(sim_node, [])
        deadline = self.now + max_time
        while True:
            for event in sim_node.events:
                if getattr(event, "op_id", None) == op_id:
                    sim_node.events.remove(event)
                    return event
            if not self._queue or self._queue[0][0] > deadline:
                return None
            at, _, action = heapq.heappop(self._queue)
            self.now = max(self.now, at)
            action()
