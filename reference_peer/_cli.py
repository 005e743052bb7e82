"""The work behind ``petal generate``, ``petal chat`` and ``petal demo``."""

from __future__ import annotations

import argparse
import itertools
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from petalproto._commands._common import CommandFailed, UsageError, parse_peers
from petalproto.core import Address
from petalproto.net import RpcError

from ._convert import prepare_default_model
from ._local_swarm import LocalSwarm

__all__ = ["chat_ids", "chat_main", "demo_main", "generate_main"]


def _model_path(args: argparse.Namespace) -> Path:
    return Path(args.model) if getattr(args, "model", None) else default_model()


def default_model() -> Path:
    """The default model's checkpoint, converted on first use.

    Raises:
        CommandFailed: the default model's package is not installed.
    """
    try:
        return prepare_default_model()
    except FileNotFoundError as exc:
        raise CommandFailed(f"no default model: {exc} (or give --model PATH)") from None


def _open(path: Path, peers: list[Any], name: str | None, minimum: str | None = None) -> Any:
    from . import DistributedModelForCausalLM

    try:
        return DistributedModelForCausalLM.from_pretrained(
            path, initial_peers=peers, model_name=name, min_precision=minimum
        )
    except ConnectionError as exc:
        raise CommandFailed(f"{exc} (is the swarm running? check --initial-peers)") from None


def _tokenizer(path: Path) -> Any:
    """The checkpoint's tokenizer.

    Raises:
        UsageError: the directory has none that transformers can load.
    """
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(
            f"argument --model: cannot load a tokenizer from {path}: {why} "
            "(the client needs the checkpoint's tokenizer files)"
        ) from None


def _client_setup(args: argparse.Namespace) -> tuple[Path, Any, list[Address]]:
    """What the client runs locally, and its initial peers.

    Raises:
        UsageError: the model directory lacks a tokenizer, or a chat template where one
            is needed.
    """
    peers = parse_peers(args.initial_peers)
    path = _model_path(args)
    tokenizer = _tokenizer(path)
    if not getattr(args, "raw", False) and getattr(tokenizer, "chat_template", None) is None:
        fix = "add --raw to complete plain text" if hasattr(args, "raw") else "give a chat model"
        raise UsageError(f"argument --model: the tokenizer in {path} has no chat template ({fix})")
    return path, tokenizer, peers


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    if getattr(args, "seed", None) is not None:
        torch.manual_seed(args.seed)
    if args.temperature > 0:
        return {"do_sample": True, "temperature": args.temperature, "top_p": args.top_p}
    return {"do_sample": False}


def stream_reply(
    model: Any,
    tokenizer: Any,
    ids: torch.Tensor,
    *,
    max_new_tokens: int,
    sampling: dict[str, Any],
    out: Any = sys.stdout,
) -> tuple[str, list[float]]:
    """Generate and print the reply as it comes; returns it and the time of each piece."""
    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = {
        "max_new_tokens": max_new_tokens,
        "streamer": streamer,
        "pad_token_id": tokenizer.pad_token_id or tokenizer.eos_token_id,
        **sampling,
    }
    failure: list[BaseException] = []

    def work() -> None:
        try:
            with torch.inference_mode():
                model.generate(ids, **kwargs)
        except BaseException as exc:
            failure.append(exc)
            streamer.on_finalized_text("", stream_end=True)

    thread = threading.Thread(target=work, daemon=True)
    start = time.perf_counter()
    thread.start()
    pieces, stamps = [], []
    for piece in streamer:
        stamps.append(time.perf_counter() - start)
        pieces.append(piece)
        out.write(piece)
        out.flush()
    thread.join()
    out.write("\n")
    if failure:
        raise failure[0]
    return "".join(pieces), stamps


def _swarm_failed(exc: BaseException) -> CommandFailed | None:
    """A swarm failure (no chain, a peer's error) as one line, or None for anything else."""
    from ._errors import PeerError, TooLong
    from ._remote import _PEER_FAULTS, NoChain

    if isinstance(exc, TooLong):
        return CommandFailed(f"{exc} (give a shorter prompt or fewer --max-new-tokens)")
    if isinstance(exc, NoChain):
        return CommandFailed(f"{exc} (start 'petal serve' for those blocks, or check --model-name)")
    if isinstance(exc, PeerError | RpcError):
        return CommandFailed(f"the swarm failed: {exc} (try again; -v logs the peers' errors)")
    if isinstance(exc, _PEER_FAULTS):
        # The peers failed more often than the client retries within one step.
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return CommandFailed(f"the swarm failed: {why} (try again; -v logs the peers' errors)")
    return None


def _reply(model: Any, tokenizer: Any, ids: torch.Tensor, args: argparse.Namespace) -> str:
    """``stream_reply`` for generate and chat, with a swarm failure as one line.

    Raises:
        CommandFailed: no chain of peers serves the model, or the peers failed.
    """
    try:
        reply, _ = stream_reply(
            model, tokenizer, ids, max_new_tokens=args.max_new_tokens, sampling=_sampling(args)
        )
    except Exception as exc:
        failed = _swarm_failed(exc)
        if failed is None:
            raise
        raise failed from None
    return reply


def chat_ids(tokenizer: Any, messages: list[dict[str, str]]) -> torch.Tensor:
    """The prompt's token ids, through the model's chat template."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    out = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
    assert isinstance(out, torch.Tensor)
    return out


def generate_main(args: argparse.Namespace) -> int:
    path, tokenizer, peers = _client_setup(args)
    model = _open(path, peers, args.model_name, args.min_precision)
    try:
        if args.raw:
            ids = tokenizer(args.prompt, return_tensors="pt")["input_ids"]
        else:
            ids = chat_ids(tokenizer, [{"role": "user", "content": args.prompt}])
        _reply(model, tokenizer, ids, args)
    finally:
        model.close()
    return 0


def chat_main(args: argparse.Namespace) -> int:
    path, tokenizer, peers = _client_setup(args)
    model = _open(path, peers, args.model_name, args.min_precision)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    try:
        while True:
            try:
                line = input("you> ").strip()
            except EOFError:
                break
            if line in {"/exit", "/quit"}:
                break
            if not line:
                continue
            messages.append({"role": "user", "content": line})
            print("model> ", end="", flush=True)
            reply = _reply(model, tokenizer, chat_ids(tokenizer, messages), args)
            messages.append({"role": "assistant", "content": reply})
    finally:
        model.close()
    return 0


def demo_main(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    print("preparing the default model (SmolLM2-135M-Instruct) ...", flush=True)
    path = default_model()
    tokenizer = AutoTokenizer.from_pretrained(path)
    print(f"starting a DHT node and {args.peers} peers on 127.0.0.1 ...", flush=True)
    with LocalSwarm(path, peers=args.peers) as swarm:
        for (address, (start, end)), seconds in zip(
            swarm.servers, swarm.peer_start_seconds, strict=True
        ):
            print(
                f"  peer {address.peer_id.short()}… at {address.host_port()} serves blocks "
                f"{start}:{end} (up in {seconds:.1f} s)"
            )
        assert swarm.dht is not None
        model = _open(path, [swarm.dht], None)
        try:
            print(f"\nuser> {args.prompt}\nmodel> ", end="", flush=True)
            ids = chat_ids(tokenizer, [{"role": "user", "content": args.prompt}])
            reply, stamps = stream_reply(
                model,
                tokenizer,
                ids,
                max_new_tokens=args.max_new_tokens,
                sampling={"do_sample": False},
            )
            route = model.chain.route
        finally:
            model.close()
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    if stamps:
        per = sum(gaps) / len(gaps) * 1e3 if gaps else float("nan")
        print(
            f"\nfirst piece after {stamps[0] * 1e3:.0f} ms, then {per:.1f} ms per piece "
            f"({len(stamps)} pieces)"
        )
    print(
        "route: " + " -> ".join(f"{s.address.peer_id.short()}…[{s.start}:{s.end}]" for s in route)
    )
    print("all processes stopped")
    return 0 if reply.strip() else 1
