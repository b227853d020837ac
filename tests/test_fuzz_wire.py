"""Property-based tests of what a sandbox controls: the frames it writes to the judge.

The invariant: whatever bytes come back, reading a frame, parsing it as a sandbox message and
decoding its value either give data or raise ``WireError``/``ProtocolError`` (a dead sandbox, in
the engine's terms) or ``EOFError`` (a short read); never anything else, and never more decoded
tensor bytes than the frame carried. Short and reproducible by default; ``TENSORGRADE_FUZZ=long``
(or ``pytest -m fuzz``) runs many more cases.
"""

from __future__ import annotations

import json
import os
import struct

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensorgrade import protocol, wire

LONG = os.environ.get("TENSORGRADE_FUZZ") == "long"
FUZZ = settings(
    max_examples=3000 if LONG else 150,
    derandomize=not LONG,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
EXPECTED = (wire.WireError, protocol.ProtocolError, EOFError)


def _reader(data: bytes):
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(data):
            raise EOFError("short frame")
        out = data[pos : pos + n]
        pos += n
        return out

    return read


def _take(data: bytes) -> None:
    """What the judge does with one answer."""
    header, blob = wire.split_frame(_reader(data))
    msg = protocol.parse_answer(header)
    value = getattr(msg, "value", None)
    if value is not None:
        dec = wire.Decoder(blob)
        dec.dec(value)
        assert dec.decoded <= len(blob)


def _frame(header: object, blob: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack(">QQ", len(text), len(blob)) + text + blob


json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=12)
)
tensor_spec = st.fixed_dictionaries(
    {
        "__tensor__": st.fixed_dictionaries(
            {
                "dtype": st.sampled_from(["float32", "float64", "int64", "uint8", "bool", "x"]),
                "shape": st.lists(st.integers(-2, 6), max_size=3),
                "offset": st.integers(-4, 80),
                "nbytes": st.integers(-4, 80),
                "device": st.sampled_from(["cpu", "cuda", "tpu", 3]),
            }
        )
    }
)
values = st.recursive(
    st.one_of(json_leaf, tensor_spec),
    lambda inner: st.one_of(
        st.fixed_dictionaries({"__list__": st.lists(inner, max_size=4)}),
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=6), inner, max_size=4),
        st.fixed_dictionaries({"__tuple__": st.lists(inner, max_size=3)}),
    ),
    max_leaves=12,
)
answers = st.fixed_dictionaries(
    {"op": st.sampled_from(["value", "ran", "names", "error", "eval", "done", "ready", "x"])},
    optional={
        "id": st.one_of(st.integers(-5, 2**63), st.text(max_size=3)),
        "value": values,
        "ok": st.booleans(),
        "stdout": st.text(max_size=20),
        "kind": st.text(max_size=8),
        "figures": st.lists(st.text(max_size=8), max_size=3),
    },
)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_are_refused_cleanly(data):
    try:
        _take(data)
    except EXPECTED:
        pass


@FUZZ
@given(answers, st.binary(max_size=96))
def test_forged_answers_are_data_or_refused(header, blob):
    try:
        _take(_frame(header, blob))
    except EXPECTED:
        pass


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 16)), min_size=2, max_size=40))
def test_tensor_entries_never_decode_more_than_the_blob(ranges):
    """Many entries naming the same bytes (or overlapping ones) are refused, never copied."""
    blob = bytes(64)
    value = {"__list__": [_uint8(off, n) for off, n in ranges]}
    spans = sorted((off, off + n) for off, n in ranges)
    pairs = zip(spans, spans[1:], strict=False)
    disjoint = all(a[1] <= b[0] for a, b in pairs) and spans[-1][1] <= len(blob)
    try:
        out = wire.Decoder(blob).dec(value)
    except wire.WireError:
        assert not disjoint, "disjoint byte ranges within the blob must decode"
        return
    assert sum(t.numel() for t in out) <= len(blob)


def _uint8(offset: int, n: int) -> dict:
    spec = {"dtype": "uint8", "shape": [n], "offset": offset, "nbytes": n, "device": "cpu"}
    return {"__tensor__": spec}


def test_a_well_formed_answer_reaches_the_decoder():
    """The properties above are not vacuous: the judge's own path decodes a real answer."""
    data, _ = wire.encode({"op": "value", "id": 7, "value": [torch.arange(4.0), (1, "x")]})
    header, blob = wire.split_frame(_reader(data))
    msg = protocol.parse_answer(header)
    out = wire.Decoder(blob).dec(msg.value)
    assert torch.equal(out[0], torch.arange(4.0)) and out[1] == (1, "x")
