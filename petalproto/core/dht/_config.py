"""Parameters of a DHT node (SPEC.md §12.7)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._routing import RoutingConfig
from ._store import StoreConfig

__all__ = ["DhtConfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DhtConfig:
    """Parameters of a DHT node (SPEC.md §12.7, §12.8).

    Attributes:
        alpha: requests in flight per lookup path (Kademlia: 3).
        disjoint_paths: d of S/Kademlia for every lookup; 1 disables it.
        request_timeout: seconds before a lookup stops waiting for one answer.
        rpc_timeout: the ``timeout`` on every ``SendRequest``.
        get_quorum: finish a ``get`` once this many peers returned records (None: full lookup).
        put_quorum: acknowledgements from the targets needed for ``PutFinished.ok`` (every
            target when fewer answered the lookup; our own store never counts).
        republish_interval: seconds between republishes of our own records (1 h, Kademlia).
        max_corrections: entry-correction puts after one ``get``.
        contact_cache: parsed contacts kept between lookups (a few lookups' worth).
        distrust_time: seconds a peer that misbehaved stays out of the routing table, even
            when it answers or calls us again.
        max_distrusted: the most such peers remembered (the oldest are forgotten first).
        clock_offset: unix time minus the ``now`` clock.
        routing: routing-table parameters; ``routing.k`` is the replication parameter.
        store: record-store limits.
    """

    alpha: int = 3
    disjoint_paths: int = 1
    request_timeout: float = 2.0
    rpc_timeout: float = 10.0
    get_quorum: int | None = None
    put_quorum: int = 3
    republish_interval: float = 3600.0
    max_corrections: int = 20
    contact_cache: int = 4096
    distrust_time: float = 600.0
    max_distrusted: int = 1024
    clock_offset: float = 0.0
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
