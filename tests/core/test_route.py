"""Chain planning over announced spans (SPEC.md §13.6)."""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from petalproto.core import Address, Identity
from petalproto.core._route import (
    PRECISIONS,
    NoChain,
    SpanInfo,
    parse_precision,
    plan_chain,
    precision_rank,
)


def span(
    start: int,
    end: int,
    throughput: float = 10.0,
    *,
    dtype: str = "float32",
    quantization: str | None = None,
) -> SpanInfo:
    peer = Identity.from_seed(os.urandom(32)).peer_id
    address = Address(peer, "127.0.0.1", 4000)
    return SpanInfo(address, "m", start, end, throughput, dtype=dtype, quantization=quantization)


def test_single_span_covers_everything() -> None:
    whole = span(0, 8)
    assert plan_chain([whole], 0, 8) == [whole]


def test_prefers_the_faster_chain() -> None:
    slow, a, b = span(0, 8, throughput=1.0), span(0, 4, 100.0), span(4, 8, 100.0)
    assert plan_chain([slow, a, b], 0, 8) == [a, b]


def test_latency_and_avoid_steer_the_choice() -> None:
    a, b = span(0, 8), span(0, 8)
    assert plan_chain([a, b], 0, 8, latency={a.peer_id: 1.0}) == [b]
    assert plan_chain([a, b], 0, 8, avoid=[b.peer_id]) == [a]
    assert plan_chain([a, b], 0, 8, jitter={a.peer_id: 0.5}) == [b]


def test_unknown_throughput_uses_a_default() -> None:
    a, b = span(0, 8, throughput=0.0), span(0, 8, throughput=1000.0)
    assert plan_chain([a, b], 0, 8) == [b]


def test_sub_range_and_out_of_range_spans() -> None:
    inner, outer = span(2, 4), span(0, 6)
    assert plan_chain([inner, outer], 2, 4) == [inner]


def test_gap_names_the_missing_blocks() -> None:
    with pytest.raises(NoChain) as info:
        plan_chain([span(0, 3), span(5, 8)], 0, 8, model="tiny")
    assert info.value.missing == [(3, 8)]
    assert "3:8" in str(info.value) and "tiny" in str(info.value)


def test_misaligned_spans_do_not_chain() -> None:
    with pytest.raises(NoChain):
        plan_chain([span(0, 5), span(4, 8)], 0, 8)


def test_empty_range_is_refused() -> None:
    with pytest.raises(ValueError):
        plan_chain([], 3, 3)


def test_worse_paths_to_a_boundary_are_skipped() -> None:
    # Two ways to reach block 4; the dearer one is popped later and skipped.
    a, b, c = span(0, 4, 1.0), span(0, 2, 100.0), span(2, 4, 100.0)
    e = span(0, 2, 50.0)  # reaches block 2, but dearer than b
    d = span(4, 6, 0.5)  # so slow that the stale entry for block 4 pops first
    assert plan_chain([a, b, e, c, d], 0, 6) == [b, c, d]


@given(st.lists(st.integers(1, 5), min_size=1, max_size=6))
def test_a_tiling_always_yields_a_contiguous_chain(widths: list[int]) -> None:
    bounds = [0]
    for width in widths:
        bounds.append(bounds[-1] + width)
    spans = [span(a, b) for a, b in itertools.pairwise(bounds)]
    chain = plan_chain(spans, 0, bounds[-1])
    assert chain[0].start == 0 and chain[-1].end == bounds[-1]
    assert all(x.end == y.start for x, y in itertools.pairwise(chain))


def test_choose_blocks_fills_the_thinnest_part() -> None:
    from petalproto.core._route import choose_blocks

    assert choose_blocks([], 30, 10) == (0, 10)
    assert choose_blocks([span(0, 10)], 30, 10) == (10, 20)
    assert choose_blocks([span(0, 10), span(10, 20)], 30, 10) == (20, 30)
    # Everything covered once: the window starting at a boundary wins the tie.
    assert choose_blocks([span(0, 15), span(15, 30)], 30, 15) in {(0, 15), (15, 30)}
    assert choose_blocks([span(0, 30), span(0, 10)], 30, 10) in {(10, 20), (20, 30)}
    with pytest.raises(ValueError):
        choose_blocks([], 30, 31)


def test_precision_is_the_quantization_else_the_dtype() -> None:
    assert span(0, 1, dtype="bfloat16").precision == "bfloat16"
    assert span(0, 1, dtype="bfloat16", quantization="nf4").precision == "nf4"
    ranks = [precision_rank(p) for p in ("float32", "bfloat16", "float16", "int8", "nf4")]
    assert ranks == [3, 2, 2, 1, 0] == sorted(PRECISIONS.values(), reverse=True)
    assert precision_rank("float64") == precision_rank("") == -1  # unknown: below all


def test_parse_precision_takes_names_and_short_names() -> None:
    assert [parse_precision(t) for t in ("bf16", "fp16", "fp32", "int8", "nf4")] == [
        "bfloat16",
        "float16",
        "float32",
        "int8",
        "nf4",
    ]
    with pytest.raises(ValueError, match=r"unknown precision 'int4'.*bf16"):
        parse_precision("int4")


def test_a_minimum_precision_plans_through_spans_at_or_above_it() -> None:
    fast_nf4 = span(0, 8, 1000.0, dtype="bfloat16", quantization="nf4")
    int8 = span(0, 4, 100.0, quantization="int8")
    bf16, fp16 = span(0, 4, 10.0, dtype="bfloat16"), span(4, 8, 10.0, dtype="float16")
    fp32 = span(4, 8, 1.0)
    every = [fast_nf4, int8, bf16, fp16, fp32]
    assert plan_chain(every, 0, 8) == [fast_nf4]
    assert plan_chain(every, 0, 8, minimum="int8") == [int8, fp16]
    assert plan_chain(every, 0, 8, minimum="bfloat16") == [bf16, fp16]  # mixed dtypes
    assert plan_chain(every, 0, 8, minimum="float16") == [bf16, fp16]
    assert plan_chain(every, 0, 8, minimum="fp16") == [bf16, fp16]
    with pytest.raises(ValueError, match="unknown precision"):
        plan_chain(every, 0, 8, minimum="fp8")
    with pytest.raises(NoChain, match="blocks 0:8 of 'm' at float32 or better") as caught:
        plan_chain(every, 0, 8, model="m", minimum="float32")
    assert caught.value.minimum == "float32"
    unknown = span(0, 8, 1000.0, dtype="float64")
    assert plan_chain([unknown], 0, 8) == [unknown]
    with pytest.raises(NoChain):
        plan_chain([unknown], 0, 8, minimum="nf4")
