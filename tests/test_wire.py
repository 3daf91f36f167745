"""The wire's own helpers: the nesting bound checked before parsing a child's header, and the
child's reader of the judge's frames."""

from __future__ import annotations

import io
import json
import random
import struct

import numpy as np
import pytest

from autotts.sandbox.wire import (
    MAX_DEPTH,
    FrameError,
    FrameReader,
    _nesting,
    loads_strict,
    pack_frame,
    read_frame,
)


def _height(raw: bytes) -> int:
    """The nesting bound by its definition: the highest prefix count of opening minus closing
    brackets (of either kind) outside strings, never below 0. A backslash followed by a
    backslash or a quote takes it as a plain character (in a string, JSON's escapes; outside
    one, where the parser stops anyway, the same)."""
    depth = top = i = 0
    inside = False
    while i < len(raw):
        c = raw[i : i + 1]
        if c == b"\\" and raw[i + 1 : i + 2] in (b"\\", b'"'):
            i += 2
            continue
        if c == b'"':
            inside = not inside
        elif not inside:
            depth += (c in b"[{") - (c in b"]}")
            top = max(top, depth)
        i += 1
    return top


def _agrees(raw: bytes) -> bool:
    got, want = _nesting(raw), _height(raw)
    return got == want if want <= MAX_DEPTH else got > MAX_DEPTH


def test_nesting_is_the_prefix_height_of_any_bracket_text():
    rng = random.Random(7)
    for _ in range(5000):
        alphabet = rng.choice([b'[]{}a"', b"[]", b"[{", b"{}]", b"[]{}", b'[]"\\', b'[]{}"\\a'])
        raw = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 300)))
        assert _agrees(raw), raw


@pytest.mark.parametrize("depth", [0, 1, 5, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 500, 40000])
def test_nesting_of_balanced_and_unbalanced_deep_text(depth: int):
    for raw in (b"[" * depth + b"{}" + b"]" * depth, b"{" * depth, b"[" * depth + b"]" * (depth // 2),
                b"]" * depth + b"[" * depth, b'["' + b"[" * depth + b'"]'):
        assert _agrees(raw), raw[:80]


def test_a_header_nested_past_the_bound_is_refused_before_parsing():
    ok = b"[" * (MAX_DEPTH - 1) + b"{}" + b"]" * (MAX_DEPTH - 1)
    loads_strict(ok)
    for deep in (b"[" * MAX_DEPTH + b"{}" + b"]" * MAX_DEPTH, b"[" * 100000 + b"]" * 100000):
        with pytest.raises(FrameError, match="nested too deeply"):
            loads_strict(deep)


def test_read_frame_takes_exactly_one_frame_and_its_arrays():
    """The batch processes share the zygote's stdin: a reader must never take bytes past its
    frame, however its arrays are read."""
    arrays = [np.arange(5, dtype=np.int64), np.array([], dtype=np.int64),
              np.array([3, -1], dtype=np.int32), np.array([True, False, True]),
              np.arange(6, dtype=np.int32).reshape(2, 3), np.zeros(0, dtype=bool)]
    first = pack_frame({"t": "reply", "m": [[1, 2, 3, 4, 5]]}, arrays)
    second = pack_frame({"t": "stop"})
    empty = [np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, bool)]
    f = io.BytesIO(pack_frame({"t": "reply"}, empty) + first + second)
    assert [a.shape for a in read_frame(f)[1]] == [(0,)] * 4
    start = f.tell()
    header, got = read_frame(f)
    assert header["t"] == "reply" and header["m"] == [[1, 2, 3, 4, 5]]
    assert len(got) == len(arrays)
    for a, b in zip(arrays, got, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and (a == b).all()
    assert f.tell() == start + len(first)
    assert read_frame(f) == ({"t": "stop"}, [])


@pytest.mark.parametrize("spec", [[[], [1]], [{}, [1]], [["<i4"], [1]], [None, [1]], [4, [1]],
                                  ["<f8", [1]], ["|O", [1]], ["<i4", [-1]], ["<i4", "1"]])
def test_an_array_spec_of_any_json_value_is_a_frame_error(spec):
    """A dtype that is a list or an object (unhashable: looking it up in the set of dtypes
    raised TypeError, out of the trusted side) is refused like any other bad spec."""
    raw = json.dumps({"t": "round", "arrays": [spec]}).encode()
    with pytest.raises(FrameError, match="bad array spec"):
        FrameReader(1 << 20).feed(struct.pack("<Q", len(raw)) + raw)


@pytest.mark.parametrize("spec", [["<i4", [1, 2, 3]], ["<i4", [2**40]], ["<i4", [True]],
                                  ["<i4", [1.0]], ["<i8", [3, None]], ["<i8"], ["<i8", [1], 0],
                                  "x", ["<i8", [[1]]]])
def test_more_bad_array_specs_are_frame_errors(spec):
    raw = json.dumps({"t": "round", "arrays": [spec]}).encode()
    with pytest.raises(FrameError, match="bad array spec"):
        FrameReader(1 << 20).feed(struct.pack("<Q", len(raw)) + raw)


def test_pack_frame_is_the_frame_of_its_arrays_bytes():
    """pack_frame writes each array's buffer as tobytes() would (C order, any input layout),
    and both readers give the arrays back."""
    arrays = [np.arange(12, dtype=np.int64).reshape(3, 4).T, np.arange(5, dtype=np.int32)[::2],
              np.array([True, False]), np.zeros(0, np.uint8), np.array(7, np.int64),
              np.arange(6, dtype=np.int64).reshape(2, 3)]
    raw = pack_frame({"t": "x"}, arrays)
    header = json.dumps({"t": "x", "arrays": [[a.dtype.str, list(np.ascontiguousarray(a).shape)]
                                              for a in arrays]}, separators=(",", ":")).encode()
    assert raw == b"".join([struct.pack("<Q", len(header)), header,
                            *(np.ascontiguousarray(a).tobytes() for a in arrays)])
    for got in (read_frame(io.BytesIO(raw)), FrameReader(1 << 20).feed(raw)[0]):
        assert len(got[1]) == len(arrays)
        for a, b in zip(arrays, got[1], strict=True):
            a = np.ascontiguousarray(a)
            assert a.dtype == b.dtype and a.shape == b.shape and (a == b).all()
    assert pack_frame({"t": "y"}) == pack_frame({"t": "y"}, [])


def test_a_header_with_a_byte_order_mark_is_a_frame_error():
    with pytest.raises(FrameError, match="BOM"):
        loads_strict('\ufeff{"t": "done"}'.encode())
