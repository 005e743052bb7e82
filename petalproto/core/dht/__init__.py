"""The Kademlia DHT, sans-IO (SPEC.md §12).

The DHT sits above connections and works on decoded messages.  ``DhtNode`` answers requests
(``handle_request``) and runs lookups, gets and puts whose requests the shell pulls with
``requests_to_send()``; ``Lookup`` and ``RoutingTable`` are usable on their own.  Records are
signed (``make_named_record``, ``make_dictionary_record``) and checked by the pure function
``validate_record`` on both the storing and the reading side.
"""

from __future__ import annotations

from ._config import DhtConfig
from ._errors import DhtRequestError, RecordRejected
from ._events import (
    DhtEvent,
    FoundNode,
    GetFinished,
    LookupFinished,
    LookupResult,
    PeerMisbehaved,
    PutFinished,
    RefreshDue,
    SendRequest,
)
from ._ids import ID_BITS, Contact, common_prefix_length, distance, key_to_id, node_id_of
from ._lookup import Lookup, LookupCommand
from ._messages import (
    FIND_NODE,
    GET,
    MAX_RECORDS_PER_RESPONSE,
    PING,
    PUT,
    FindNode,
    Get,
    K,
    Listen,
    Ping,
    Put,
    Request,
    nodes_body,
    parse_get_response,
    parse_nodes_response,
    parse_request,
)
from ._protocol import DhtNode
from ._records import (
    MAX_NAME_BYTES,
    MAX_RECORD_TTL,
    MAX_VALUE_BYTES,
    RECORD_DOMAIN,
    Record,
    make_dictionary_record,
    make_named_record,
    named_key,
    parse_record,
    record_rank,
    select_best,
    validate_record,
)
from ._routing import RoutingConfig, RoutingTable
from ._store import RecordStore, StoreConfig

__all__ = [
    "FIND_NODE",
    "GET",
    "ID_BITS",
    "MAX_NAME_BYTES",
    "MAX_RECORDS_PER_RESPONSE",
    "MAX_RECORD_TTL",
    "MAX_VALUE_BYTES",
    "PING",
    "PUT",
    "RECORD_DOMAIN",
    "Contact",
    "DhtConfig",
    "DhtEvent",
    "DhtNode",
    "DhtRequestError",
    "FindNode",
    "FoundNode",
    "Get",
    "GetFinished",
    "K",
    "Listen",
    "Lookup",
    "LookupCommand",
    "LookupFinished",
    "LookupResult",
    "PeerMisbehaved",
    "Ping",
    "Put",
    "PutFinished",
    "Record",
    "RecordRejected",
    "RecordStore",
    "RefreshDue",
    "Request",
    "RoutingConfig",
    "RoutingTable",
    "SendRequest",
    "StoreConfig",
    "common_prefix_length",
    "distance",
    "key_to_id",
    "make_dictionary_record",
    "make_named_record",
    "named_key",
    "node_id_of",
    "nodes_body",
    "parse_get_response",
    "parse_nodes_response",
    "parse_record",
    "parse_request",
    "record_rank",
    "select_best",
    "validate_record",
]
