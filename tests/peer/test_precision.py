"""Precision chosen per device, announced, and required by clients (SPEC.md §13.8).

The planning rules are pure functions over block sizes; the estimates are checked against
what a loaded span really holds; a `petal serve` process that must fit a small memory budget
quantizes, says so in `peer.info`, its announcement and `petal status`; a client that asks
for a minimum plans around spans below it, and a chain of mixed precisions gives the local
model's tokens within the dtype's tolerance.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from petalproto.core import Address, Identity
from petalproto.core._route import NoChain
from reference_peer import DistributedModelForCausalLM, SpanModel
from reference_peer._local_swarm import LocalSwarm
from reference_peer._memory import (
    DoesNotFit,
    block_weight_bytes,
    cache_bytes_per_token,
    plan_span,
    usable_bytes,
)
from reference_peer._remote import RemoteChain, Swarm

from .swarm import InProcessSwarm
from .tiny import LAYERS

pytestmark = pytest.mark.model

MIB = 1 << 20
#: Six blocks of 10, 6 and 3 MiB at full precision, int8 and nf4.
WEIGHTS: dict[Any, list[int]] = {None: [10 * MIB] * 6, "int8": [6 * MIB] * 6, "nf4": [3 * MIB] * 6}


def _plan(**kwargs: Any) -> Any:
    args: dict[str, Any] = {
        "weights": WEIGHTS,
        "start": None,
        "count": None,
        "quantization": "auto",
        "cache_per_block": MIB,
        "free": 1 << 40,
    }
    return plan_span(**(args | kwargs))


def test_auto_quantizes_a_fixed_span_only_when_it_does_not_fit() -> None:
    # 6 blocks: 66 MiB unquantized, 42 MiB at int8, 24 MiB at nf4 (cache included).
    assert _plan(start=0, count=6, limit=70 * MIB).quantization is None
    assert _plan(start=0, count=6, limit=50 * MIB).quantization == "int8"
    assert _plan(start=0, count=6, limit=30 * MIB).quantization == "nf4"
    with pytest.raises(DoesNotFit, match="6 blocks need 24 MiB even at nf4"):
        _plan(start=0, count=6, limit=20 * MIB)
    # What the operator asked for is never second-guessed.
    asked = _plan(start=0, count=6, quantization=None, limit=1, weights={None: WEIGHTS[None]})
    assert (asked.quantization, asked.count) == (None, 6)


def test_auto_block_count_fills_memory_at_full_precision_first() -> None:
    assert _plan(limit=70 * MIB).count == 6
    plan = _plan(limit=45 * MIB)
    assert (plan.count, plan.quantization) == (4, None)
    assert "4 of 6 blocks fit at full precision" in plan.why
    # Not one block at full precision: the most blocks at int8, then at nf4.
    assert (_plan(limit=8 * MIB).count, _plan(limit=8 * MIB).quantization) == (1, "int8")
    assert (_plan(limit=4 * MIB).count, _plan(limit=4 * MIB).quantization) == (1, "nf4")
    with pytest.raises(DoesNotFit, match="not even one block fits"):
        _plan(limit=MIB)


def test_the_heaviest_window_decides_when_the_start_is_open() -> None:
    uneven: dict[Any, list[int]] = {None: [MIB, MIB, 10 * MIB, MIB]}
    open_start = {"weights": uneven, "count": 2, "cache_per_block": 0}
    # The swarm picks where the 2 blocks go: they must fit wherever that is.
    assert _plan(**open_start, limit=11 * MIB).quantization is None
    with pytest.raises(DoesNotFit, match="2 blocks need 11 MiB"):
        _plan(**open_start, limit=5 * MIB)
    assert _plan(**open_start, start=0, limit=2 * MIB).quantization is None


def test_free_memory_keeps_a_reserve() -> None:
    assert usable_bytes(10 << 30) == 9 << 30
    assert usable_bytes(100 * MIB) == 0  # less than the 256 MiB floor
    assert _plan(free=10 << 30).count == 6


def test_estimates_match_a_loaded_span(tiny_checkpoint: Callable[[str], Path]) -> None:
    path = tiny_checkpoint("llama")
    config = AutoConfig.from_pretrained(path)
    full = block_weight_bytes(path, config, dtype=torch.float32, quantization=None)
    span = SpanModel(path, 2, 4, device="cpu")
    blocks: Any = span.model.get_submodule("layers")
    loaded = [sum(p.numel() * p.element_size() for p in b.parameters()) for b in blocks]
    assert full[2:4] == loaded
    assert block_weight_bytes(path, config, dtype=torch.bfloat16, quantization=None) == [
        n // 2 for n in full
    ]
    int8 = block_weight_bytes(path, config, dtype=torch.float32, quantization="int8")
    nf4 = block_weight_bytes(path, config, dtype=torch.float32, quantization="nf4")
    assert all(a > b > c for a, b, c in zip(full, int8, nf4, strict=True))
    # Two blocks of keys and values of 2 heads of 8 floats.
    per_block = cache_bytes_per_token(config, torch.float32)
    assert per_block == 2 * 2 * 8 * 4
    assert span.cache_bytes_per_token == 2 * per_block


# Through real processes ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def quantized(tiny_checkpoint: Callable[[str], Path]) -> Iterator[LocalSwarm]:
    """A DHT node and a `petal serve` of all blocks that must fit a budget between the
    blocks' int8 and full-precision sizes."""
    path = tiny_checkpoint("llama")
    config = AutoConfig.from_pretrained(path)
    cache = 100 * cache_bytes_per_token(config, torch.float32)
    full = sum(block_weight_bytes(path, config, dtype=torch.float32, quantization=None))
    int8 = sum(block_weight_bytes(path, config, dtype=torch.float32, quantization="int8"))
    budget = (full + int8) // 2 + LAYERS * cache
    args = ["--memory", str(budget), "--cache-tokens", "100", "--device", "cpu"]
    with LocalSwarm(path, spans=[(0, LAYERS)], extra_serve_args=args) as swarm:
        yield swarm


@pytest.mark.slow
def test_a_server_that_must_quantize_says_so_everywhere(quantized: LocalSwarm) -> None:
    assert quantized.dht is not None
    address = quantized.servers[0][0]
    swarm = Swarm([quantized.dht])
    try:
        info = swarm.loop.run(swarm.pool.call, address, "peer.info", {})
        assert (info["dtype"], info["quantization"]) == ("float32", "int8")
        (announced,) = swarm.loop.run(swarm.spans, quantized.model_path.name)
        assert (announced.dtype, announced.quantization, announced.precision) == (
            "float32",
            "int8",
            "int8",
        )
    finally:
        swarm.close()
    argv = ["status", "--initial-peers", str(quantized.dht), "--model", quantized.model_path.name]
    status = subprocess.run(
        [sys.executable, "-m", "petalproto.cli", *argv, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    (server,) = json.loads(status.stdout)["model"]["servers"]
    assert (server["precision"], server["dtype"]) == ("int8", "float32")


@pytest.mark.slow
def test_a_client_that_asks_for_more_precision_finds_no_chain(quantized: LocalSwarm) -> None:
    path = quantized.model_path
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    strict: Any = DistributedModelForCausalLM.from_pretrained(
        path, initial_peers=[quantized.dht], min_precision="bf16"
    )
    try:
        with pytest.raises(NoChain, match=r"blocks 0:6 of 'llama' at bfloat16 or better"):
            strict.generate(ids, max_new_tokens=2, do_sample=False)
    finally:
        strict.close()
    lax: Any = DistributedModelForCausalLM.from_pretrained(
        path, initial_peers=[quantized.dht], min_precision="int8"
    )
    try:
        out = lax.generate(ids, max_new_tokens=4, do_sample=False)
        assert out.shape == (1, 10)
        assert [s.precision for s in lax.chain.route] == ["int8"]
    finally:
        lax.close()


def test_min_precision_is_checked_when_the_model_is_made(
    tiny_checkpoint: Callable[[str], Path],
) -> None:
    path = tiny_checkpoint("llama")
    nobody = Address(Identity.from_seed(bytes(32)).peer_id, "127.0.0.1", 9)
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        DistributedModelForCausalLM.from_pretrained(
            path, initial_peers=[nobody], min_precision="int4"
        )


# Mixed precisions in one chain ---------------------------------------------------------------


@pytest.fixture
def servers() -> Iterator[InProcessSwarm]:
    swarm = InProcessSwarm()
    yield swarm
    swarm.close()


@pytest.mark.slow
def test_a_chain_may_mix_precisions(
    tiny_checkpoint: Callable[[str], Path], servers: InProcessSwarm
) -> None:
    path = tiny_checkpoint("llama")
    servers.add(path, 0, 3, model="llama", dtype=torch.bfloat16)
    servers.add(path, 3, LAYERS, model="llama")
    local: Any = AutoModelForCausalLM.from_pretrained(path)
    local.eval()
    ids = torch.randint(3, 98, (1, 16), generator=torch.Generator().manual_seed(5))
    for minimum, route in [("bf16", ["bfloat16", "float32"]), ("fp32", None)]:
        swarm = Swarm(servers.addresses, use_dht=False)
        chain = RemoteChain(swarm, "llama", LAYERS, min_precision=minimum)
        model: Any = DistributedModelForCausalLM.from_pretrained(path, chain=chain)
        try:
            if route is None:
                with pytest.raises(NoChain, match="at float32 or better"):
                    model(ids)
                continue
            with torch.no_grad():
                ours, theirs = model(ids).logits, local(ids).logits
            assert [s.precision for s in chain.route] == route
            # bf16 keeps 8 bits of mantissa: about 2-3 significant digits.
            torch.testing.assert_close(ours, theirs, rtol=0.05, atol=0.1)
            assert (ours - theirs).abs().max() > 0  # bf16 did run
        finally:
            chain.close()
            swarm.close()


@pytest.mark.slow
def test_petal_generate_with_a_minimum_names_it_when_no_chain_meets_it(
    quantized: LocalSwarm,
) -> None:
    argv = ["generate", "--prompt", "hi", "--raw", "--max-new-tokens", "2"]
    argv += ["--initial-peers", str(quantized.dht), "--model", str(quantized.model_path)]
    done = subprocess.run(
        [sys.executable, "-m", "petalproto.cli", *argv, "--min-precision", "bf16"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "blocks 0:6" in last and "at bfloat16 or better" in last
