"""``petal serve``: load a span, measure it, announce it, serve it until signalled."""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import trio

from petalproto._commands._common import (
    CommandFailed,
    UsageError,
    check_initial_peers,
    load_identity,
    parse_peers,
    print_first_line,
    start_node,
    watch_initial_peers,
    write_atomic,
)
from petalproto.net import Node

log = logging.getLogger("reference_peer.serve")


def _progress(enabled: bool, total: int) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc="loading span",
        unit="step",
        disable=not enabled,
        file=sys.stderr,
        leave=False,
    )


def _dtype(args: argparse.Namespace) -> Any:
    import torch

    # --dtype choices are torch dtype names
    return None if args.dtype == "auto" else getattr(torch, args.dtype)


def load_span(args: argparse.Namespace, start: int, end: int) -> Any:
    from ._spans import SpanModel

    span = SpanModel(
        args.model,
        start,
        end,
        device=args.device,
        dtype=_dtype(args),
        quantization=args.quantization,
        max_sessions=args.max_sessions,
    )
    span.cache_budget_bytes = args.cache_tokens * span.cache_bytes_per_token
    return span


def _load_span_or_fail(args: argparse.Namespace, start: int, end: int) -> Any:
    """``load_span``, with what the user can fix (device, dtype, quantization) as one line.

    Raises:
        CommandFailed: the span cannot be loaded as asked.
    """
    try:
        return load_span(args, start, end)
    except (RuntimeError, ValueError, ImportError, OSError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CommandFailed(
            f"cannot load blocks {start}:{end} of {args.model} on --device {args.device} "
            f"(--dtype {args.dtype}, quantization {args.quantization or 'none'}): "
            f"{type(exc).__name__}: {why} (check --device, --dtype and --quantize)"
        ) from None


def serve_main(args: argparse.Namespace) -> int:
    """``petal serve``: check what the arguments name, then serve until signalled.

    Raises:
        UsageError: the model cannot be read, or the blocks are not in it.
        CommandFailed: we cannot listen, or a span fails to load.
    """
    model_name = args.model_name or Path(args.model).resolve().name
    total = _num_blocks(args.model)
    if args.blocks and args.blocks[1] > total:
        raise UsageError(
            f"argument --blocks: the model has {total} blocks; cannot serve "
            f"{args.blocks[0]}:{args.blocks[1]} (give START:END with END <= {total})"
        )
    if isinstance(args.num_blocks, int) and args.num_blocks > total:
        raise UsageError(
            f"argument --num-blocks: the model has {total} blocks; cannot serve "
            f"{args.num_blocks} (give 1..{total}, or auto)"
        )
    _check_device(args.device)
    load_identity(args.identity)  # a bad key file is a usage error before anything runs
    trio.run(_serve, args, model_name, total)
    return 0


def _plan(args: argparse.Namespace) -> Any:
    """SPEC.md §13.8 and ``_memory``: the quantization and block count to serve.

    Raises:
        CommandFailed: the checkpoint's weights cannot be read, or ``auto`` found nothing
            that fits the device.
    """
    import importlib.util

    from ._arch import load_config
    from ._loading import Quantization, pick_device
    from ._memory import (
        DoesNotFit,
        block_weight_bytes,
        cache_bytes_per_token,
        free_bytes,
        plan_span,
    )

    config = load_config(args.model)
    device, dtype = pick_device(args.device, _dtype(args))
    wanted = None if args.quantize == "none" else args.quantize
    options: list[Quantization | None]
    if wanted == "auto":
        # bitsandbytes quantizes on CUDA and on the CPU, not on MPS.
        can_quantize = importlib.util.find_spec("bitsandbytes") and device.type != "mps"
        options = [None, "int8", "nf4"] if can_quantize else [None]
    else:
        options = [wanted]
    try:
        weights = {
            q: block_weight_bytes(Path(args.model), config, dtype=dtype, quantization=q)
            for q in options
        }
    except (OSError, ValueError) as exc:
        raise CommandFailed(f"cannot read the weights in {args.model}: {exc}") from None
    start, count = (
        (args.blocks[0], args.blocks[1] - args.blocks[0]) if args.blocks else (None, None)
    )
    if isinstance(args.num_blocks, int):
        count = args.num_blocks
    try:
        return plan_span(
            weights,
            start=start,
            count=count,
            quantization=wanted,
            cache_per_block=args.cache_tokens * cache_bytes_per_token(config, dtype),
            free=free_bytes(device),
            limit=args.memory,
        )
    except DoesNotFit as exc:
        raise CommandFailed(
            f"blocks of {args.model} do not fit {device} in {str(dtype).removeprefix('torch.')}: "
            f"{exc} (give fewer --num-blocks, a smaller --cache-tokens, or another --device)"
        ) from None


def _check_device(device: str) -> None:
    import torch

    kind = device.partition(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            f"argument --device: {device}: CUDA is not available here (use --device cpu or auto)"
        )
    if kind == "cuda" and ":" in device and int(device[5:]) >= torch.cuda.device_count():
        raise UsageError(
            f"argument --device: {device}: there are {torch.cuda.device_count()} CUDA devices "
            "(give cuda:0 up to the last one)"
        )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UsageError(
            f"argument --device: {device}: MPS is not available here (use --device cpu or auto)"
        )


def _num_blocks(model: str) -> int:
    from ._arch import load_config, num_layers

    try:
        return num_layers(load_config(model))
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(
            f"argument --model: cannot read the checkpoint config in {model}: {why} "
            "(give a Hugging Face checkpoint directory of a supported model)"
        ) from None


def _announcements(
    nursery: trio.Nursery,
    args: argparse.Namespace,
    *,
    dht: Any,
    identity: Any,
    server: Any,
    address: Any,
) -> Any:
    """The task that keeps ``server`` announced, which a move stops and starts again."""
    from ._announce import ANNOUNCE_INTERVAL, ANNOUNCE_LIFETIME, keep_announced, withdraw
    from ._rebalance import Announcements

    lifetime = args.announce_lifetime or ANNOUNCE_LIFETIME
    keep = functools.partial(
        keep_announced,
        dht,
        identity,
        server,
        address,
        interval=args.announce_interval or ANNOUNCE_INTERVAL,
        lifetime=lifetime,
    )
    return Announcements(
        nursery, keep, functools.partial(withdraw, dht, identity, server.model, lifetime=lifetime)
    )


async def _rebalance(scope: trio.CancelScope, args: argparse.Namespace, keep: Any) -> None:
    """Run ``keep`` (``keep_balanced`` with its arguments bound) every ``--rebalance-period``
    seconds; by default only a server that chose its own blocks moves them."""
    from ._rebalance import REBALANCE_PERIOD

    period = args.rebalance_period
    if period is None:
        period = 0.0 if args.blocks else REBALANCE_PERIOD
    if period > 0:
        log.info("checking the swarm's balance about every %.0f s", period)
        with scope:
            await keep(period=period)


async def _serve(args: argparse.Namespace, model_name: str, total: int) -> None:
    from petalproto.core._route import choose_blocks
    from petalproto.net import DhtService

    from ._announce import spans_from_records, spans_key
    from ._loop import run_in_own_thread
    from ._rebalance import keep_balanced
    from ._server import PeerServer, measure_throughput

    identity = load_identity(args.identity)
    host, port = args.listen
    node = Node(
        identity,
        host=host,
        port=port,
        announce_host=args.announce_host,
        announce_port=args.announce_port,
    )
    initial = parse_peers(args.initial_peers)
    async with trio.open_nursery() as nursery:
        await start_node(nursery, node, args.listen)
        # The join retries forever: say at once which initial peer is down or someone else.
        others = [a for a in initial if a.peer_id != identity.peer_id]
        await check_initial_peers(others, strict=False)
        dht = DhtService.for_node(node, initial_peers=initial)
        nursery.start_soon(watch_initial_peers, dht, others)
        await nursery.start(dht.run)
        plan = _plan(args)
        args.quantization, args.count = plan.quantization, plan.count
        log.info("precision and size: %s", plan.why)

        async def read_spans() -> list[Any]:
            return spans_from_records(await dht.get(spans_key(model_name)), model_name)

        if args.blocks:
            start, end = args.blocks
        else:
            start, end = choose_blocks(await read_spans(), total, args.count)
        started = time.perf_counter()
        with _progress(not args.no_progress, 2) as bar:
            span = await run_in_own_thread(_load_span_or_fail, args, start, end)
            bar.update(1)
            # On the loop's thread, where the steps will run too (see _server).
            throughput = measure_throughput(span)
            bar.update(1)
        log.info(
            "span %d:%d of %s loaded in %.2f s, %.1f tokens/s",
            start,
            end,
            model_name,
            time.perf_counter() - started,
            throughput,
        )
        server = PeerServer(span, model_name, throughput=throughput)
        server.register(node.router, pool=node.pool)
        announcements = _announcements(
            nursery, args, dht=dht, identity=identity, server=server, address=node.address
        )
        await announcements.start()
        rebalancing = trio.CancelScope()
        keep = functools.partial(
            keep_balanced,
            server,
            node.address,
            total=total,
            read_spans=read_spans,
            announcements=announcements,
            load=functools.partial(load_span, args),
        )
        nursery.start_soon(_rebalance, rebalancing, args, keep)
        if args.busy_poll:
            from ._warm import keep_warm

            nursery.start_soon(keep_warm, server)
        print_first_line(str(node.address))
        if args.address_file:
            write_atomic(Path(args.address_file), f"{node.address}\n".encode())
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        # No move from now on; withdraw while the DHT still runs, then stop everything.
        rebalancing.cancel()
        await announcements.close()
        nursery.cancel_scope.cancel()


__all__ = ["serve_main"]
