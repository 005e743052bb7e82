"""Running conformance cases in-process: against a Node, or against a broken peer."""

from __future__ import annotations

import os
from collections.abc import Iterable

import trio

from conformance import Case, Options, Result, load_cases, run_cases
from petalproto.core import Address, Config, Identity
from petalproto.net import Node
from petalproto.net._dht import DhtService

from .broken_peer import Faults, serve_broken


def all_cases() -> list[Case]:
    return load_cases().all()


def get_case(case_id: str) -> Case:
    return load_cases().get(case_id)


async def run_against_node(
    cases: Iterable[Case], *, case_timeout: float = 2.0, handshake_timeout: float = 10.0
) -> list[Result]:
    """Start a Node on 127.0.0.1:0 and run ``cases`` against it."""
    config = Config(handshake_timeout=handshake_timeout)
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(
            Node(Identity.from_seed(os.urandom(32)), config=config).run
        )
        await nursery.start(DhtService.for_node(node).run)
        results = await run_cases(cases, Options.for_address(node.address, timeout=case_timeout))
        nursery.cancel_scope.cancel()
    return results


async def run_against_broken(
    cases: Iterable[Case], faults: Faults, *, case_timeout: float, address: Address | None = None
) -> list[Result]:
    """Start a broken peer and run ``cases`` against it; ``address`` overrides the peer id
    the run expects."""
    async with trio.open_nursery() as nursery:
        served: Address = await nursery.start(serve_broken, faults)
        target = address or served
        options = Options(
            host=served.host, port=served.port, peer_id=target.peer_id, timeout=case_timeout
        )
        results = await run_cases(cases, options)
        nursery.cancel_scope.cancel()
    return results
