"""The wire between the trusted judge and the sandbox child: frames, and how untrusted ones are read.

A frame is an 8-byte little-endian length, a JSON header of that many bytes, then raw arrays whose
dtypes and shapes the header lists (`"arrays": [[dtype, shape], ...]`). Nothing is pickled in
either direction. The parent reads the child's frames with `FrameReader`, which never raises
anything but `FrameError`: sizes are capped, JSON is parsed strictly (no NaN / Infinity, no float
that overflows to infinity, bounded nesting), and only the array dtypes listed in FRAME_DTYPES
are accepted.

Messages (the `t` field of a header):
  parent -> child   init (source, β grid, limits, ...), unit (start a work unit: public facts of
                    its first episodes), reply (answers to the child's actions, more episodes to
                    start, `end` once the unit is complete), stop
  child -> parent   configs (NAME and the knobs of each β), round (one message per episode the
                    child was resumed for: an action request, a final answer or an episode error),
                    verdict (the candidate failed as a whole), config_error, done (printed output)

The two messages of every round travel mostly as int64 tables rather than JSON (JSON's encode,
decode and strict checks cost more than the actions' own bookkeeping):

  round   arrays [rows (R, 5) int64, indices int32, masks bool]; header "m" (JSON messages),
          "e" (trace events). A row is one message, in the round's order:
          [slot, op, a, b, events], `op` one of the OP_* codes below; `events` 1 takes the next
          entry of "e" (the episode's trace events since its last message), 0 none. OP_JSON
          takes the next message of "m", the full form [slot, op name, args(, events)] that
          carries what a row cannot (an episode error's text, an argument past int64; a JSON
          branch list and a `times` that is no int are still read, though the client reads
          those itself); its slot must be the row's, and its trace
          events travel inside it (the row's `events` is 0).
  reply   arrays [rows (R, 5) int64, branch, depth, answer, final]; header "x" (the refusals'
          messages), "start", "end". A row answers one action of the round, in its order:
          [slot, generated, probes, actions, n]: the next n reveals of the four arrays, or
          n == -1, a refusal whose message is the next entry of "x".
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any, BinaryIO

import numpy as np

FRAME_DTYPES = frozenset({"<i4", "<i8", "|u1", "|b1"})
_DTYPES = {name: np.dtype(name) for name in FRAME_DTYPES}

# A round's row: [slot, op, a, b, events]. Branch lists (OP_*_IDX: `a` int32 indices of the
# round's index array; OP_*_MASK: `a` entries of its mask array, a mask of any length) are taken
# in row order; `b` is advance_many's times. Unused fields are 0.
ROUND_COLS = 5
REPLY_COLS = 5
OP_JSON = 0  # the next JSON message of the round
OP_ADVANCE_MANY_IDX = 1
OP_ADVANCE_MANY_MASK = 2
OP_PRUNE_MANY_IDX = 3
OP_PRUNE_MANY_MASK = 4
OP_BRANCH = 5  # a: probe (0 / 1)
OP_BRANCH_MANY = 6  # a: k, b: probe (0 / 1)
OP_ADVANCE = 7  # a: the branch (and so on for the next five)
OP_EXTEND = 8
OP_PROBE = 9
OP_READ = 10
OP_PRUNE = 11
OP_READ_NEW_MANY = 12  # a: k
OP_READ_NEW = 13
OP_ANSWER = 14  # a: 1 with an answer class b (int32), 0 for None
REFUSED = -1  # a reply row's n: the action was refused
_LEN = struct.Struct("<Q")
MAX_DEPTH = 64  # nesting of a JSON header from the child (its brackets outside strings)


class FrameError(Exception):
    """A frame that is malformed or larger than allowed."""


class FrameTooLarge(FrameError):
    """More than the parent agreed to hold: the candidate's `output_limit`."""


def frame_json_default(o: Any) -> Any:
    """The frames' own `json.dumps` default, kept apart from autotts.fsio.json_default on purpose:
    a frame carries only numbers, strings, lists and the arrays the other side validates, so no
    Path or other object is turned into a string here (a candidate's stray value fails as a
    protocol error instead), and the wire imports nothing from autotts that the sandbox child
    would then load beside candidate code."""
    if isinstance(o, np.integer | np.bool_):
        return o.item()
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


# Built once: json.dumps with arguments builds an encoder on every call.
_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=False,
                           default=frame_json_default).encode


# dtype -> its name on the wire, for the frame dtypes (dtype.str builds the name on every read).
_NAMES = {dt: name for name, dt in _DTYPES.items()}


def pack_frame(header: dict[str, Any], arrays: list[np.ndarray] | tuple[()] = ()) -> bytes:
    if not arrays:
        raw = _ENCODE(header).encode("utf-8")
        return _LEN.pack(len(raw)) + raw
    arrs = [np.ascontiguousarray(a) for a in arrays]
    names = _NAMES
    head = dict(header, arrays=[[names.get(a.dtype) or a.dtype.str, list(a.shape)]
                                for a in arrs])
    raw = _ENCODE(head).encode("utf-8")
    # The arrays' buffers as they are (C-contiguous: the bytes tobytes() would copy out).
    return b"".join([_LEN.pack(len(raw)), raw, *arrs])


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise ValueError("a number overflows to infinity")
    return x


_OPEN = np.zeros(256, dtype=np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1


_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'[]{}"')))


def _structure(raw: bytes) -> bytes:
    """The brackets of UTF-8 JSON text that are outside its strings, as "[" and "]" (the
    parser's recursion follows these alone). A bracket inside a string must not count: a "]"
    there would lower the count below the real depth by one, as many times as the text has
    room for. Outside strings a backslash is an error the parser stops at, so escapes are read
    as inside a string throughout: a run of backslashes pairs up left to right, and what is left
    of it escapes the next byte. Past a point where the parser stops (an unterminated string,
    a stray quote), what this makes of the rest is never parsed."""
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Quotes and brackets alone. Two adjacent quotes close one string and open the next (or
    # make an empty one) with no bracket between: dropped, what is between the rest pairs up.
    s = raw.translate(_BRACKETS, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in s:  # a string that holds brackets: keep what is between strings
        s = b"".join(s.split(b'"')[::2])
    return s


def _nesting(raw: bytes) -> int:
    """The nesting depth of UTF-8 JSON text, of what a parser would read of it: exact for the
    prefix it parses (an upper bound past it). Checked before parsing: the C parser recurses
    once per level, and the interpreter's recursion limit may be raised for a moment by another
    thread (admission), so it is no guard here."""
    s = _structure(raw)
    # The usual frame first: its brackets are balanced, and deleting every innermost pair "[]"
    # at once lowers the height by exactly one, so the number of passes that empties them is
    # the depth (a few passes instead of an array pass over the text). Only for a small header:
    # the passes are bounded by MAX_DEPTH, their cost by its length.
    if len(s) <= 1 << 16:
        t = s
        for passes in range(MAX_DEPTH + 1):
            if not t:
                return passes
            u = t.replace(b"[]", b"")
            if len(u) == len(t):
                break  # unbalanced: counted exactly below
            t = u
    depth, top = 0, 0
    view = np.frombuffer(s, dtype=np.uint8)
    for start in range(0, len(view), 1 << 20):
        run = np.cumsum(_OPEN[view[start : start + (1 << 20)]], dtype=np.int32) + depth
        if len(run):
            top = max(top, int(run.max()))
            depth = int(run[-1])
        if top > MAX_DEPTH:
            break
    return top


# Built once (json.loads with arguments builds a decoder, and its scanner, on every call).
_STRICT_DECODE = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float).decode


def loads_strict(raw: bytes) -> Any:
    """JSON from an untrusted peer: UTF-8 only, finite numbers, bounded nesting; FrameError
    otherwise."""
    if _nesting(raw) > MAX_DEPTH:
        raise FrameError("frame header nested too deeply")
    try:
        # Decoded here, as UTF-8 (as json.loads reads UTF-8 bytes): given bytes, json.loads
        # would also take UTF-16 and UTF-32, where the bound read from bytes means nothing.
        text = raw.decode("utf-8", "surrogatepass")
        if text.startswith("\ufeff"):  # as json.loads refuses it
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        obj = _STRICT_DECODE(text)
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        raise FrameError(f"bad frame header: {str(e)[:100]}") from None
    return obj


def _array_specs(header: dict[str, Any], max_arrays: int) -> list[tuple[np.dtype, tuple[int, ...], int]]:
    specs = header.get("arrays", [])
    if type(specs) is not list or len(specs) > max_arrays:
        raise FrameError("bad array list")
    out = []
    for spec in specs:
        # (a dtype that is a list or an object cannot even be looked up in a dict)
        if type(spec) is not list or len(spec) != 2:
            raise FrameError(f"bad array spec {str(spec)[:100]}")
        name, dims = spec
        dt = _DTYPES.get(name) if type(name) is str else None
        if dt is None or type(dims) is not list or len(dims) > 2:
            raise FrameError(f"bad array spec {str(spec)[:100]}")
        n = dt.itemsize
        for d in dims:  # (a loop, not all() over a generator: a few per frame, every frame)
            if type(d) is not int or not 0 <= d < _MAX_DIM:
                raise FrameError(f"bad array spec {str(spec)[:100]}")
            n *= d
        out.append((dt, tuple(dims), n))
    return out


_MAX_DIM = 2**40


class FrameReader:
    """Incremental parser of frames from an untrusted byte stream. `max_frame` caps one frame,
    `max_header` its JSON header (bulk data travels in arrays), `max_total` everything the
    stream may send. A header is parsed once, however many reads its arrays take."""

    def __init__(self, max_total: int, max_frame: int = 64 << 20, max_arrays: int = 8,
                 max_header: int = 8 << 20) -> None:
        self.buf = bytearray()
        self.max_total = max_total
        self.max_frame = max_frame
        self.max_header = min(max_header, max_frame)
        self.max_arrays = max_arrays
        self.total = 0
        self._head: tuple[dict[str, Any], list[tuple[np.dtype, tuple[int, ...], int]], int] | None
        self._head = None

    @property
    def pending(self) -> bool:
        """Whether part of a frame has been read and the rest not yet."""
        return bool(self.buf) or self._head is not None

    def feed(self, data: bytes) -> list[tuple[dict[str, Any], list[np.ndarray]]]:
        self.total += len(data)
        if self.total > self.max_total:
            raise FrameTooLarge(f"the sandbox sent more than {self.max_total} bytes")
        self.buf += data
        frames = []
        while True:
            if self._head is None:
                if len(self.buf) < _LEN.size:
                    break
                (hlen,) = _LEN.unpack_from(self.buf)
                if hlen > self.max_header:
                    raise FrameTooLarge(f"a frame header of {hlen} bytes (at most "
                                        f"{self.max_header})")
                if len(self.buf) < _LEN.size + hlen:
                    break
                header = loads_strict(bytes(self.buf[_LEN.size : _LEN.size + hlen]))
                if type(header) is not dict:
                    raise FrameError("frame header is not an object")
                specs = _array_specs(header, self.max_arrays)
                if hlen + sum(n for _, _, n in specs) > self.max_frame:
                    raise FrameTooLarge(f"a frame of more than {self.max_frame} bytes")
                self._head = (header, specs, hlen)
            header, specs, hlen = self._head
            need = _LEN.size + hlen + sum(n for _, _, n in specs)
            if len(self.buf) < need:
                break
            pos = _LEN.size + hlen
            arrays = []
            if specs:
                # One copy of the frame's arrays (read-only views of it), through a view of
                # the buffer: a slice of the bytearray would be a second copy. The view is
                # released before the buffer is cut below (an exported bytearray cannot resize).
                with memoryview(self.buf) as view:
                    data = bytes(view[pos:need])
                pos = 0
                for dt, shape, n in specs:
                    arrays.append(np.frombuffer(data, dtype=dt, count=n // dt.itemsize,
                                                offset=pos).reshape(shape))
                    pos += n
            del self.buf[:need]
            self._head = None
            frames.append((header, arrays))
        return frames


def _read_exact(f: BinaryIO, n: int) -> bytes:
    parts = []
    while n:
        data = f.read(n)
        if not data:
            raise EOFError("the judge closed the pipe")
        parts.append(data)
        n -= len(data)
    return b"".join(parts)


def read_frame(f: BinaryIO) -> tuple[dict[str, Any], list[np.ndarray]]:
    """One frame from the trusted parent (the child's side: no caps needed). Its arrays are
    read in one go (one system call per frame part: the child reads stdin unbuffered)."""
    (hlen,) = _LEN.unpack(_read_exact(f, _LEN.size))
    header = json.loads(_read_exact(f, hlen))
    specs = _array_specs(header, max_arrays=1 << 16)
    if not specs:
        return header, []
    data = _read_exact(f, sum(n for _, _, n in specs))
    arrays, pos = [], 0
    for dt, shape, n in specs:
        arrays.append(np.frombuffer(data, dtype=dt, count=n // dt.itemsize, offset=pos)
                      .reshape(shape))
        pos += n
    return header, arrays


# ---- printing what a child sent ------------------------------------------------------------------

_CONTROL = {i: f"\\x{i:02x}" for i in range(32) if i not in (9, 10)}
_CONTROL.update({0x7F: "\\x7f"})
_CONTROL.update({i: f"\\x{i:02x}" for i in range(0x80, 0xA0)})


def escape(text: str, limit: int = 4000, *, newlines: bool = True) -> str:
    """Text from the child made safe to print: control characters and terminal escapes (ESC, C1
    controls, DEL) shown as \\xNN, lone surrogates replaced, cut to `limit` characters."""
    s = str(text)[:limit].translate(_CONTROL)
    if not newlines:
        s = s.replace("\n", "\\n")
    return s.encode("utf-8", "replace").decode("utf-8")
