"""Fuzz what a server reads of push (SPEC.md §13.9): a step's ``push`` list, the push id of
an opening or of an ``inference.push`` message, and the step's tensors.

Run with atheris (``pip install atheris``)::

    python fuzz/push_messages.py -max_len=8192

Without atheris the module still imports, and ``TestOneInput(data)`` can be called directly
(``tests/peer/test_push.py`` does). The rule checked is the one of STYLE.md §3: a peer's
message may only raise ``RpcError`` with a code of §10.4 (BAD_REQUEST for the push fields,
BAD_TENSOR for tensors); whatever parses must round-trip through ``PushTarget.to_wire``.
"""

from __future__ import annotations

import contextlib
import sys

try:
    import atheris
except ImportError:  # pragma: no cover - atheris is optional
    atheris = None

# torch and transformers, which the server's module needs, load first and uninstrumented:
# instrumenting them takes minutes and gives the fuzzer nothing about our parsers.
import torch  # noqa: F401
import transformers  # noqa: F401

import reference_peer._spans
import reference_peer._tensors  # noqa: F401

# Instrument our code for coverage feedback only when fuzzing, not when tests import this.
_FUZZING = __name__ == "__main__" and atheris is not None
with atheris.instrument_imports() if _FUZZING else contextlib.nullcontext():
    from petalproto.core import ErrorCode
    from petalproto.core._errors import MalformedMessage
    from petalproto.core._msgpack import decode_strict
    from petalproto.net import RpcError
    from reference_peer._push import MAX_PUSH_HOPS, PUSH_ID_BYTES, parse_push, parse_push_id
    from reference_peer._server import _tensor

_ALLOWED = {ErrorCode.BAD_REQUEST, ErrorCode.BAD_TENSOR}


def _check(parse: object, *args: object) -> object:
    try:
        return parse(*args)  # type: ignore[operator]
    except RpcError as exc:
        if exc.code not in _ALLOWED:
            raise AssertionError(f"unexpected code {exc.code!r}: {exc}") from None
        return None


def TestOneInput(data: bytes) -> None:  # the name atheris and libFuzzer expect
    """One fuzz case: ``data`` is a msgpack object received as a step or a pushed step."""
    try:
        obj = decode_strict(data)
    except MalformedMessage:
        return
    if not isinstance(obj, dict):
        return
    push_id = _check(parse_push_id, obj.get("session"))
    assert push_id is None or (isinstance(push_id, bytes) and len(push_id) == PUSH_ID_BYTES)
    targets = _check(parse_push, obj)
    if targets is not None:
        assert isinstance(targets, list) and len(targets) <= MAX_PUSH_HOPS
        again = parse_push({"push": [t.to_wire() for t in targets]})
        assert again == targets, (again, targets)
    for key in ("hidden", "attention_mask", "position_ids"):
        _check(_tensor, obj, key)


if __name__ == "__main__":  # pragma: no cover - manual fuzzing
    if atheris is None:
        sys.exit("atheris is not installed")
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
