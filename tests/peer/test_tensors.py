"""The wire codec for tensors: exact round trips, and nothing but BadTensor on garbage."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from reference_peer import BadTensor, tensor_from_wire, tensor_to_wire
from reference_peer._tensors import DTYPES

LIMIT = 1 << 20


@pytest.mark.parametrize("dtype", list(DTYPES.values()))
def test_round_trip_every_dtype(dtype: torch.dtype) -> None:
    tensor = (torch.randn(2, 3, 5) * 100).to(dtype)
    back = tensor_from_wire(tensor_to_wire(tensor), max_bytes=LIMIT)
    assert back.dtype == dtype
    assert torch.equal(back, tensor)


def test_bfloat16_keeps_its_bits() -> None:
    tensor = torch.tensor([1.0, -2.5, float("inf"), 3e38], dtype=torch.bfloat16)
    wire = tensor_to_wire(tensor)
    assert wire["data"] == tensor.view(torch.int16).numpy().tobytes()
    assert torch.equal(
        tensor_from_wire(wire, max_bytes=LIMIT).view(torch.int16), tensor.view(torch.int16)
    )


def test_layout_is_c_order_little_endian() -> None:
    tensor = torch.tensor([[1, 2], [3, 4]], dtype=torch.int32).t()  # not contiguous
    assert tensor_to_wire(tensor) == {
        "dtype": "int32",
        "shape": [2, 2],
        "data": bytes([1, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 4, 0, 0, 0]),
    }


def test_scalar_and_empty() -> None:
    assert tensor_from_wire(tensor_to_wire(torch.tensor(1.5)), max_bytes=4).item() == 1.5
    empty = tensor_from_wire({"dtype": "float32", "shape": [0, 7], "data": b""}, max_bytes=0)
    assert empty.shape == (0, 7)


def test_decoded_tensor_is_writable_and_owns_its_memory() -> None:
    data = bytes(8)
    tensor = tensor_from_wire({"dtype": "float32", "shape": [2], "data": data}, max_bytes=8)
    tensor += 1
    assert data == bytes(8)


@pytest.mark.parametrize(
    ("tensor", "why"),
    [
        (torch.zeros(2, dtype=torch.float64), "dtype"),
        (torch.zeros(1, 1, 1, 1, 1), "rank"),
        (torch.zeros(2, dtype=torch.complex64), "dtype"),
    ],
)
def test_encoder_refuses(tensor: torch.Tensor, why: str) -> None:
    with pytest.raises(BadTensor, match=why):
        tensor_to_wire(tensor)


GOOD: dict[str, Any] = {"dtype": "float32", "shape": [2, 2], "data": bytes(16)}


@pytest.mark.parametrize(
    "wire",
    [
        None,
        [],
        {},
        {**GOOD, "extra": 1},
        {"dtype": "float32", "shape": [4]},
        {**GOOD, "dtype": "float64"},
        {**GOOD, "dtype": b"float32"},
        {**GOOD, "dtype": "torch.float32"},
        {**GOOD, "shape": (2, 2)},
        {**GOOD, "shape": [2, -2]},
        {**GOOD, "shape": [2, 2.0]},
        {**GOOD, "shape": [True, 2]},
        {**GOOD, "shape": [1, 1, 1, 2, 2]},
        {**GOOD, "data": bytearray(16)},
        {**GOOD, "data": "0" * 16},
        {**GOOD, "data": bytes(15)},
        {**GOOD, "data": bytes(17)},
        {"dtype": "bool", "shape": [2], "data": b"\x01\x02"},
        {"dtype": "float32", "shape": [2**40, 2**40, 2**40, 2**40], "data": b""},
        {"dtype": "int64", "shape": [2**62], "data": b""},
    ],
)
def test_decoder_refuses(wire: object) -> None:
    with pytest.raises(BadTensor):
        tensor_from_wire(wire, max_bytes=LIMIT)


def test_limit_is_checked_before_the_length() -> None:
    with pytest.raises(BadTensor, match="limit"):
        tensor_from_wire({"dtype": "float32", "shape": [5], "data": b""}, max_bytes=16)
    assert tensor_from_wire({**GOOD}, max_bytes=16).shape == (2, 2)


def test_bad_tensor_is_a_value_error_with_its_wire_code() -> None:
    assert issubclass(BadTensor, ValueError)
    assert BadTensor.code == 32


@st.composite
def wire_tensors(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from(sorted(DTYPES)))
    shape = draw(st.lists(st.integers(0, 4), max_size=4))
    size = math.prod(shape) * DTYPES[name].itemsize
    if name == "bool":
        data = bytes(draw(st.lists(st.integers(0, 1), min_size=size, max_size=size)))
    else:
        data = draw(st.binary(min_size=size, max_size=size))
    return {"dtype": name, "shape": shape, "data": data}


@given(wire_tensors())
def test_decode_then_encode_is_identity(wire: dict[str, Any]) -> None:
    assert tensor_to_wire(tensor_from_wire(wire, max_bytes=LIMIT)) == wire


_leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary()
_garbage = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)


@pytest.mark.slow
@given(
    st.one_of(
        _garbage,
        st.fixed_dictionaries(
            {
                "dtype": st.sampled_from([*DTYPES, "x"]) | _leaves,
                "shape": _garbage,
                "data": _garbage,
            }
        ),
        st.fixed_dictionaries(
            {
                "dtype": st.sampled_from(sorted(DTYPES)),
                "shape": st.lists(st.integers(-2, 2**33), max_size=5),
                "data": st.binary(max_size=64),
            }
        ),
    )
)
def test_garbage_raises_only_bad_tensor(wire: object) -> None:
    try:
        tensor = tensor_from_wire(wire, max_bytes=LIMIT)
    except BadTensor:
        return
    assert tensor.numel() * tensor.element_size() <= LIMIT
