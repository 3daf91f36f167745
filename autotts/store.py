"""The replay store (DESIGN §4): Parquet tables plus a manifest, and the AutoTTS JSON layout.

A store is a directory:

    manifest.json       schema version, name, model, benchmark, Δ, answer mode, source, hashes
    questions.parquet   one row per question (text, gold, gold class)
    branches.parquet    one row per branch (tokens, final answer/class, probe answers/classes)
    answers.parquet     one row per answer class (its representative string)

In memory a store is a `Store`: the manifest and three pyarrow tables. Every way in (a store
directory, a published AutoTTS JSON file) builds a `Store`; every way out (a directory, JSON, dense
replay arrays) reads one. Replay never sees the gold answers: `Store.replay()` returns gold-free
arrays and `Store.gold_classes()` the scorer's side separately.

pyarrow is imported where a table is built or read, not with this module: a store read from JSON
builds its tables on first use, and replay and scoring read the columns it was parsed into, so an
`autotts eval` of a JSON file never loads pyarrow (~30 ms of a one-store run).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import operator
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autotts import __version__
from autotts.answers import ANSWER_MODES, NO_ANSWER, NO_ANSWER_STRINGS, classify
from autotts.errors import StoreError
from autotts.fsio import atomic_write_bytes

if TYPE_CHECKING:
    import pyarrow as pa

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TABLE_FILES = ("questions.parquet", "branches.parquet", "answers.parquet")

# The tables' columns and types (as pyarrow spells them), in column order.
QUESTION_FIELDS = (
    ("question_idx", "int32"),
    ("question", "string"),
    ("gold", "string"),
    ("gold_class", "int32"),
    ("num_branches", "int32"),
    # Published files repeat the finals here; null means "equal to the branches' finals".
    ("final_answers_trace", "list<string>"),
    # Keys of a source question that this schema does not model, as JSON (lossless import).
    ("extra", "string"),
)
BRANCH_FIELDS = (
    ("question_idx", "int32"),
    ("branch_idx", "int32"),
    ("tokens", "int32"),
    ("final_answer", "string"),
    ("final_class", "int32"),
    ("probe_answers", "list<string>"),
    ("probe_classes", "list<int32>"),
)
ANSWER_FIELDS = (
    ("question_idx", "int32"),
    ("answer_class", "int32"),
    ("answer", "string"),
)
INT32_MAX = 2**31 - 1


@lru_cache(maxsize=1)
def _schemas() -> dict[str, pa.Schema]:
    import pyarrow as pa

    types = {"int32": pa.int32(), "string": pa.string(),
             "list<string>": pa.list_(pa.string()), "list<int32>": pa.list_(pa.int32())}
    return {name: pa.schema([(f, types[t]) for f, t in fields]) for name, fields in
            zip(TABLE_FILES, (QUESTION_FIELDS, BRANCH_FIELDS, ANSWER_FIELDS), strict=True)}


# The pyarrow schemas, built on first use (module attributes as before: QUESTIONS_SCHEMA, ...).
_SCHEMA_NAMES = dict(zip(("QUESTIONS_SCHEMA", "BRANCHES_SCHEMA", "ANSWERS_SCHEMA"), TABLE_FILES,
                         strict=True))


def __getattr__(name: str) -> Any:
    if name in _SCHEMA_NAMES:
        return _schemas()[_SCHEMA_NAMES[name]]
    if name == "SCHEMAS":
        return dict(_schemas())
    raise AttributeError(f"module 'autotts.store' has no attribute {name!r}")


# ---- columns without pandas -------------------------------------------------------------------
# pyarrow's own conversions (pa.array, Table.from_pydict, Array.to_numpy, pq.read_table) import
# pandas on first use when it is installed: about 0.15 s of CPU, a third of a one-store
# `autotts eval`. The load path therefore moves its columns through buffers; only the rare column
# with nulls takes pyarrow's way (and its exact result).


def _ints(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An integer column as numpy (a read-only view where possible), as col.to_numpy() gives it."""
    import pyarrow as pa

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.null_count or not pa.types.is_integer(col.type):
        return col.to_numpy(zero_copy_only=False)
    dtype = np.dtype(f"{'i' if pa.types.is_signed_integer(col.type) else 'u'}{col.type.bit_width // 8}")
    buf = col.buffers()[1]
    if buf is None or not len(col):
        return np.zeros(0, dtype=dtype)
    return np.frombuffer(buf, dtype=dtype, count=len(col), offset=col.offset * dtype.itemsize)


def _validity(valid: list[bool] | None, n: int) -> tuple[pa.Buffer | None, int]:
    import pyarrow as pa

    if valid is None or all(valid):
        return None, 0
    bits = np.packbits(np.asarray(valid, dtype=bool), bitorder="little")
    return pa.py_buffer(bits.tobytes()), n - int(sum(valid))


def _int32_column(values: list[int] | np.ndarray) -> pa.Array:
    import pyarrow as pa

    a = np.ascontiguousarray(values, dtype=np.int32)
    return pa.Array.from_buffers(pa.int32(), len(a), [None, pa.py_buffer(a)])


def _offsets(lengths: list[int] | np.ndarray) -> pa.Buffer | None:
    import pyarrow as pa

    off = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=off[1:])
    if off[-1] > INT32_MAX:
        return None  # past 32-bit offsets: pyarrow's own builder decides
    return pa.py_buffer(off.astype(np.int32))


def _string_column(values: list[str | None]) -> pa.Array:
    """A utf8 column (None: null), as pa.array(values, pa.string()) builds it."""
    import pyarrow as pa

    validity, nulls = None, 0
    try:
        # One encode of the whole column; a string's byte length is its length where it is
        # ASCII (all but a handful of answer strings), and is measured for the others.
        data = "".join(values).encode("utf-8")  # type: ignore[arg-type]
    except TypeError:  # a None (null) among them
        enc = [b"" if v is None else v.encode("utf-8") for v in values]
        lengths = list(map(len, enc))
        data = b"".join(enc)
        validity, nulls = _validity([v is not None for v in values], len(values))
    else:
        lengths = list(map(len, values))  # type: ignore[arg-type]
        if len(data) != sum(lengths):
            for i in itertools.compress(range(len(values)),
                                        map(operator.not_, map(str.isascii, values))):
                lengths[i] = len(values[i].encode("utf-8"))  # type: ignore[union-attr]
    off = _offsets(lengths)
    if off is None:
        return pa.array(values, pa.string())
    return pa.Array.from_buffers(pa.string(), len(values),
                                 [validity, off, pa.py_buffer(data)], null_count=nulls)


def _string_list_column(values: list[list[str] | None]) -> pa.Array:
    """A list<string> column (None: null), as pa.array(values, pa.list_(pa.string())) builds it."""
    import pyarrow as pa

    child = _string_column([s for v in values if v is not None for s in v] if None in values
                           else list(itertools.chain.from_iterable(values)))  # type: ignore[arg-type]
    off = _offsets([0 if v is None else len(v) for v in values])
    if off is None:
        return pa.array(values, pa.list_(pa.string()))
    validity, nulls = _validity(None if None not in values else [v is not None for v in values],
                                len(values))
    return pa.Array.from_buffers(pa.list_(pa.string()), len(values), [validity, off],
                                 null_count=nulls, children=[child])


def _int32_list_column(values: list[np.ndarray]) -> pa.Array:
    return _int32_list_from_flat(np.concatenate(values) if values else np.zeros(0, np.int32),
                                 [len(v) for v in values])


def _int32_list_from_flat(flat: np.ndarray, lengths: list[int] | np.ndarray) -> pa.Array:
    """The list<int32> column whose row i holds the next lengths[i] values of `flat`."""
    import pyarrow as pa

    off = _offsets(lengths)
    if off is None:
        rows = np.split(flat.astype(np.int32), np.cumsum(lengths)[:-1]) if len(lengths) else []
        return pa.array(rows, pa.list_(pa.int32()))
    return pa.Array.from_buffers(pa.list_(pa.int32()), len(lengths), [None, off],
                                 children=[_int32_column(flat)])


def _table(columns: dict[str, Any], schema: pa.Schema) -> pa.Table:
    """pa.Table.from_pydict(columns, schema=schema), built from buffers."""
    import pyarrow as pa

    arrays = []
    for f in schema:
        v = columns[f.name]
        if isinstance(v, pa.Array):  # built already
            arrays.append(v)
        elif f.type == pa.int32():
            arrays.append(_int32_column(v))
        elif f.type == pa.string():
            arrays.append(_string_column(v))
        elif f.type == pa.list_(pa.string()):
            arrays.append(_string_list_column(v))
        elif f.type == pa.list_(pa.int32()):
            arrays.append(_int32_list_column(v))
        else:  # a type this module does not build itself
            arrays.append(pa.array(v, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


@dataclass(frozen=True)
class ReplayData:
    """Dense, gold-free arrays for replay. Branch rows of question q are offsets[q]:offsets[q+1];
    probes of branch row r are probe_class[probe_offsets[r]:probe_offsets[r+1]]."""

    name: str
    delta: int
    branch_offsets: np.ndarray  # int64 [Q+1]
    tokens: np.ndarray  # int32 [B]
    final_class: np.ndarray  # int32 [B]
    probe_offsets: np.ndarray  # int64 [B+1]
    probe_class: np.ndarray  # int32 [P]
    # Per question, the class of the model's own "no answer" output ('ERR' or empty) in exact
    # stores, -1 if there is none (math stores already map those to -1). Public: it describes the
    # model's output format, not the gold answer.
    err_class: np.ndarray | None = None  # int32 [Q]

    @property
    def num_questions(self) -> int:
        return len(self.branch_offsets) - 1

    def num_branches(self, q: int) -> int:
        return int(self.branch_offsets[q + 1] - self.branch_offsets[q])


@dataclass
class _Columns:
    """A store's content as the JSON reader parsed it, before any table is built: the questions'
    and answers' columns as lists (questions: by QUESTION_FIELDS name), the branches' as one row
    of values per column (probe answers as one list per branch), and the class columns as int32
    arrays."""

    questions: dict[str, list[Any]]
    answers: dict[str, list[Any]]
    tokens: list[int]
    final_answer: list[str]
    final_class: np.ndarray  # int32 [B]
    probe_answers: list[list[str]]
    probe_class: np.ndarray  # int32 [P], every branch's probes in a row
    probe_lengths: np.ndarray  # int64 [B]

    def tables(self) -> tuple[pa.Table, pa.Table, pa.Table]:
        schemas = _schemas()
        counts = self.questions["num_branches"]
        branches = {
            "question_idx": np.repeat(np.arange(len(counts), dtype=np.int32), counts),
            "branch_idx": np.concatenate([np.arange(n, dtype=np.int32) for n in counts]),
            "tokens": self.tokens,
            "final_answer": self.final_answer,
            "final_class": self.final_class,
            "probe_answers": self.probe_answers,
            "probe_classes": _int32_list_from_flat(self.probe_class, self.probe_lengths),
        }
        return (_table(self.questions, schemas[TABLE_FILES[0]]),
                _table(branches, schemas[TABLE_FILES[1]]),
                _table(self.answers, schemas[TABLE_FILES[2]]))

    def no_answer(self) -> tuple[np.ndarray, dict[int, dict[int, int]]]:
        """`_no_answer_classes` of these answers."""
        a = self.answers
        hits = [(q, c) for q, c, t in zip(a["question_idx"], a["answer_class"], a["answer"],
                                          strict=True)
                if t is not None and t.strip() in NO_ANSWER_STRINGS]
        return _no_answer_classes(hits, len(self.questions["num_branches"]))

    def replay(self, name: str, delta: int) -> ReplayData:
        """What Store.replay() reads from the tables built from these columns, array for array."""
        nq = len(self.questions["num_branches"])
        offsets = np.zeros(nq + 1, dtype=np.int64)
        np.cumsum(self.questions["num_branches"], out=offsets[1:])
        p_off = np.zeros(len(self.probe_lengths) + 1, dtype=np.int64)
        np.cumsum(self.probe_lengths, out=p_off[1:])
        err, merged = self.no_answer()
        final_class, probe_class = self.final_class.copy(), self.probe_class.copy()
        _merge_no_answer(merged, offsets, p_off, final_class, probe_class)
        return ReplayData(
            name=name,
            delta=delta,
            branch_offsets=offsets,
            tokens=np.array(self.tokens, dtype=np.int32),
            final_class=final_class,
            probe_offsets=p_off,
            probe_class=probe_class,
            err_class=err,
        )


def _no_answer_classes(hits: Sequence[tuple[int, int]], nq: int
                       ) -> tuple[np.ndarray, dict[int, dict[int, int]]]:
    """From the (question, class) pairs of the answers spelt 'ERR' or empty: per question the class
    of the model's own "no answer" output (-1 if none), and the questions whose answers spell it
    both ways. An exact store gives 'ERR' and empty two classes (string identity); both are that
    one output (docs/semantics.md: id 0), so the replay reads them as one class, the first seen
    (the smaller: exact classes are numbered in first-seen order). `merged[q]`: other -> kept."""
    err = np.full(nq, NO_ANSWER, dtype=np.int32)
    seen: dict[int, list[int]] = {}
    for q, c in hits:
        seen.setdefault(int(q), []).append(int(c))
    merged: dict[int, dict[int, int]] = {}
    for q, cs in seen.items():
        keep = min(cs)
        err[q] = keep
        others = {c: keep for c in cs if c != keep}
        if others:
            merged[q] = others
    return err, merged


def _merge_no_answer(merged: dict[int, dict[int, int]], offsets: np.ndarray, p_off: np.ndarray,
                     final_class: np.ndarray, probe_class: np.ndarray) -> None:
    """Rewrite, in place, each merged question's other "no answer" classes to the kept one."""
    for q, others in merged.items():
        r0, r1 = int(offsets[q]), int(offsets[q + 1])
        for arr in (final_class[r0:r1], probe_class[int(p_off[r0]):int(p_off[r1])]):
            for other, keep in others.items():
                arr[arr == other] = keep


class Store:
    """A store in memory: its manifest, its three tables (`questions`, `branches`, `answers`) and
    where it was read from. Tables may be replaced (`store.branches = ...`)."""

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by content

    def __init__(self, manifest: dict[str, Any], questions: pa.Table, branches: pa.Table,
                 answers: pa.Table, path: str = "") -> None:
        self.manifest = manifest
        self._questions, self._branches, self._answers = questions, branches, answers
        self._columns: _Columns | None = None
        self.path = path

    @classmethod
    def _from_columns(cls, manifest: dict[str, Any], columns: _Columns) -> Store:
        """A store whose tables are built from `columns` when first asked for."""
        store = cls(manifest, None, None, None)
        store._columns = columns
        return store

    def _tables(self) -> tuple[pa.Table, pa.Table, pa.Table]:
        if self._columns is not None:
            self._questions, self._branches, self._answers = self._columns.tables()
            self._columns = None  # from now on the tables are the store (they may be replaced)
        return self._questions, self._branches, self._answers

    @property
    def questions(self) -> pa.Table:
        return self._tables()[0]

    @questions.setter
    def questions(self, table: pa.Table) -> None:
        self._tables()
        self._questions = table

    @property
    def branches(self) -> pa.Table:
        return self._tables()[1]

    @branches.setter
    def branches(self, table: pa.Table) -> None:
        self._tables()
        self._branches = table

    @property
    def answers(self) -> pa.Table:
        return self._tables()[2]

    @answers.setter
    def answers(self, table: pa.Table) -> None:
        self._tables()
        self._answers = table

    def __repr__(self) -> str:
        return f"Store(name={self.manifest.get('name')!r}, path={self.path!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Store):
            return NotImplemented
        return (self.manifest == other.manifest and self.path == other.path
                and all(a.equals(b) for a, b in zip(self._tables(), other._tables(),
                                                    strict=True)))

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def delta(self) -> int:
        return int(self.manifest["delta"])

    @property
    def answer_mode(self) -> str:
        return str(self.manifest["answer_mode"])

    @property
    def num_questions(self) -> int:
        if self._columns is not None:
            return len(self._columns.questions["question_idx"])
        return self.questions.num_rows

    def replay(self) -> ReplayData:
        """Gold-free dense arrays (int32 classes and tokens, int64 offsets) for the engine."""
        if self._columns is not None:
            return self._columns.replay(self.name, self.delta)
        b = self.branches
        counts = _ints(b.column("question_idx"))
        offsets = np.zeros(self.num_questions + 1, dtype=np.int64)
        np.cumsum(np.bincount(counts, minlength=self.num_questions), out=offsets[1:])
        probes = b.column("probe_classes").combine_chunks()
        p_off = _ints(probes.offsets).astype(np.int64)
        # flatten() without nulls is the values between the first and last offset (and, unlike
        # flatten(), needs no pyarrow.compute)
        flat = (probes.values.slice(int(p_off[0]), int(p_off[-1] - p_off[0]))
                if not probes.null_count else probes.flatten())
        p_off -= p_off[0]
        err, merged = self._no_answer()
        final_class = _ints(b.column("final_class")).astype(np.int32)
        probe_class = _ints(flat).astype(np.int32)
        _merge_no_answer(merged, offsets, p_off, final_class, probe_class)
        return ReplayData(
            name=self.name,
            delta=self.delta,
            branch_offsets=offsets,
            tokens=_ints(b.column("tokens")).astype(np.int32),
            final_class=final_class,
            probe_offsets=p_off,
            probe_class=probe_class,
            err_class=err,
        )

    def _no_answer(self) -> tuple[np.ndarray, dict[int, dict[int, int]]]:
        """`_no_answer_classes` of this store's answers."""
        if self._columns is not None:
            return self._columns.no_answer()
        a = self.answers
        # str.strip() trims exactly what pyarrow's utf8_trim_whitespace trims (tested); plain
        # Python here spares the load path the import of pyarrow.compute.
        hit = np.flatnonzero([t is not None and t.strip() in NO_ANSWER_STRINGS
                              for t in a.column("answer").to_pylist()])
        pairs = zip(_ints(a.column("question_idx"))[hit].tolist(),
                    _ints(a.column("answer_class"))[hit].tolist(), strict=True)
        return _no_answer_classes(list(pairs), self.num_questions)

    def gold_classes(self) -> np.ndarray:
        """The scorer's side: gold class per question (int32). Never handed to the engine."""
        if self._columns is not None:
            gold = np.array(self._columns.questions["gold_class"], dtype=np.int32)
            texts = self._columns.questions["gold"]
        else:
            gold = _ints(self.questions.column("gold_class")).astype(np.int32)
            texts = self.questions.column("gold").to_pylist()
        # A gold spelt as the model's "no answer" output is scored as the class the replay reads
        # that output as (see _no_answer_classes); no published gold is.
        if any(t is not None and t.strip() in NO_ANSWER_STRINGS for t in texts):
            merged = self._no_answer()[1]
            for q, others in merged.items():
                gold[q] = others.get(int(gold[q]), gold[q])
        return gold


# --------------------------------------------------------------------------------------------
# AutoTTS JSON  ->  Store


def _fail(path: Path, qi: int | None, field: str | None, msg: str) -> StoreError:
    return StoreError(path, msg, question=qi, field=field)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_str_list(path: Path, qi: int, field: str, value: object) -> list[str]:
    if not isinstance(value, list):
        raise _fail(path, qi, field, f"expected a list of strings, got {type(value).__name__}")
    for k, s in enumerate(value):
        if not isinstance(s, str):
            raise _fail(path, qi, f"{field}[{k}]", f"expected a string, got {s!r}")
    return value


def _check_branches(path: Path, qi: int, branches: list[Any]
                    ) -> tuple[list[list[str]], list[int], list[str]]:
    """(probe answers, tokens, final answer) of each branch, or the first bad field's error."""
    probe_lists: list[list[str]] = []
    finals: list[str] = []
    tokens: list[int] = []
    for bi, br in enumerate(branches):
        field = f"each_branch[{bi}]"
        if not isinstance(br, list) or len(br) != 3:
            raise _fail(path, qi, field, "expected [probe_answers, branch_tokens, final_answer]")
        probes, tok, final = br
        _check_str_list(path, qi, f"{field}[0] (probe_answers)", probes)
        probe_lists.append(probes)
        if not _is_int(tok) or tok < 0 or tok > INT32_MAX:
            raise _fail(path, qi, f"{field}[1] (branch_tokens)",
                        f"expected a non-negative integer, got {tok!r}")
        tokens.append(tok)
        if not isinstance(final, str):
            raise _fail(path, qi, f"{field}[2] (final_answer)", f"expected a string, got {final!r}")
        finals.append(final)
    return probe_lists, tokens, finals


def _split_branches(path: Path, qi: int, branches: list[Any]
                    ) -> tuple[list[list[str]], list[int], list[str], list[str]]:
    """(probe answers per branch, tokens, final answers, every probe answer in a row). Whole
    columns are checked at once (the loop per branch was a tenth of a one-store load); where one
    is not plainly well-typed, `_check_branches` decides, branch by branch, and names the first
    bad field."""
    if set(map(type, branches)) == {list} and set(map(len, branches)) == {3}:
        probe_col, tok_col, final_col = zip(*branches, strict=True)
        if (set(map(type, probe_col)) == {list} and set(map(type, tok_col)) == {int}
                and min(tok_col) >= 0 and max(tok_col) <= INT32_MAX
                and set(map(type, final_col)) == {str}):
            flat = list(itertools.chain.from_iterable(probe_col))
            try:
                "".join(flat)  # a TypeError where an item is not a str (a subclass is one)
            except TypeError:
                pass
            else:
                return list(probe_col), list(tok_col), list(final_col), flat
    probe_lists, tokens, finals = _check_branches(path, qi, branches)
    return probe_lists, tokens, finals, list(itertools.chain.from_iterable(probe_lists))


def store_name_for(path: Path) -> tuple[str, str]:
    """(model, benchmark) of a published file: <parent folder>/<file stem>. The parent is taken
    from the absolute path, so a bare file name (`renamed.json`) gets the current folder's name,
    never an empty model that would make the name '/renamed'."""
    parent = Path(os.path.abspath(path)).parent.name
    return parent or "unknown", path.stem


def missing_path_error(path: str | os.PathLike[str]) -> StoreError:
    """The one message for a store or JSON file that is not there (import, eval, inspect, ...);
    where the path is one of the published files, it names the command that fetches them."""
    from autotts.datasets import is_published_path, missing_hint

    msg = "no such store or file"
    if is_published_path(path):
        msg += f"; {missing_hint()}"
    return StoreError(path, msg)


def read_autotts_json(path: str | os.PathLike[str], answers: str = "exact") -> Store:
    """Read a published AutoTTS replay file, validating every field (errors name q and field)."""
    path = Path(path)
    if answers not in ANSWER_MODES:
        raise StoreError(path, f"unknown answer mode {answers!r} (expected exact or math)")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise missing_path_error(path) from None
    except OSError as e:
        raise StoreError(path, f"cannot read: {e.strerror or e}") from None
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(path, f"not valid JSON: {e}") from None
    model, bench = store_name_for(path)
    source = {"kind": "autotts-json", "file": path.name, "sha256": hashlib.sha256(raw).hexdigest()}
    store = from_autotts_records(data, model=model, benchmark=bench, answers=answers,
                                 origin=path, source=source)
    store.path = str(path)
    return store


def from_autotts_records(
    data: Any,
    *,
    model: str,
    benchmark: str,
    answers: str = "exact",
    origin: str | os.PathLike[str] = "<records>",
    source: dict[str, Any] | None = None,
) -> Store:
    """Build a store from records in the AutoTTS JSON layout (a list of question objects)."""
    path = Path(origin)
    if answers not in ANSWER_MODES:
        raise StoreError(path, f"unknown answer mode {answers!r} (expected exact or math)")
    if not isinstance(data, list):
        raise StoreError(path, f"expected a JSON list of questions, got {type(data).__name__}")
    if not data:
        raise StoreError(path, "the file holds no questions")

    known = {"question", "gold_answer", "probe_freq", "final_answers_trace", "each_branch"}
    delta: int | None = None
    q_rows: dict[str, list[Any]] = {f: [] for f, _ in QUESTION_FIELDS}
    a_rows: dict[str, list[Any]] = {f: [] for f, _ in ANSWER_FIELDS}
    tokens: list[int] = []
    final_answers: list[str] = []
    probe_answers: list[list[str]] = []
    final_classes: list[np.ndarray] = []  # per question
    probe_classes: list[np.ndarray] = []  # per question, its branches' probe classes in a row
    for qi, q in enumerate(data):
        if not isinstance(q, dict):
            raise _fail(path, qi, None, f"expected an object, got {type(q).__name__}")
        for key in ("question", "gold_answer", "probe_freq", "each_branch"):
            if key not in q:
                raise _fail(path, qi, key, "missing")
        if not isinstance(q["question"], str):
            raise _fail(path, qi, "question", f"expected a string, got {q['question']!r:.60}")
        gold = q["gold_answer"]
        if not isinstance(gold, str):
            raise _fail(path, qi, "gold_answer", f"expected a string, got {gold!r}")
        pf = q["probe_freq"]
        if not _is_int(pf) or pf <= 0:
            raise _fail(path, qi, "probe_freq", f"expected a positive integer, got {pf!r}")
        if delta is None:
            delta = pf
        elif pf != delta:
            raise _fail(path, qi, "probe_freq", f"{pf} differs from {delta} of question 0")
        branches = q["each_branch"]
        if not isinstance(branches, list):
            raise _fail(path, qi, "each_branch", f"expected a list, got {type(branches).__name__}")
        if not branches:
            raise _fail(path, qi, "each_branch", "empty: a question needs at least one branch")
        probe_lists, branch_tokens, finals, flat = _split_branches(path, qi, branches)

        trace = q.get("final_answers_trace")
        if trace is not None:
            _check_str_list(path, qi, "final_answers_trace", trace)
            if trace == finals:
                trace = None  # the usual case: derivable from the branches, not stored twice
        extra = {k: v for k, v in q.items() if k not in known}

        ac = classify(flat + finals, gold, answers)
        classes = np.asarray(ac.classes, dtype=np.int32)
        tokens += branch_tokens
        final_answers += finals
        probe_answers += probe_lists
        final_classes.append(classes[len(flat):])
        probe_classes.append(classes[:len(flat)])
        q_rows["question_idx"].append(qi)
        q_rows["question"].append(q["question"])
        q_rows["gold"].append(gold)
        q_rows["gold_class"].append(int(ac.gold_class))
        q_rows["num_branches"].append(len(branches))
        q_rows["final_answers_trace"].append(trace)
        q_rows["extra"].append(json.dumps(extra, ensure_ascii=False) if extra else None)
        n_classes = len(ac.representatives)
        a_rows["question_idx"] += [qi] * n_classes
        a_rows["answer_class"] += range(n_classes)
        a_rows["answer"] += ac.representatives

    columns = _Columns(
        questions=q_rows,
        answers=a_rows,
        tokens=tokens,
        final_answer=final_answers,
        final_class=np.concatenate(final_classes),
        probe_answers=probe_answers,
        probe_class=np.concatenate(probe_classes),
        probe_lengths=np.fromiter(map(len, probe_answers), dtype=np.int64,
                                  count=len(probe_answers)),
    )
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "name": f"{model}/{benchmark}",
        "model": model,
        "benchmark": benchmark,
        "delta": delta,
        "answer_mode": answers,
        "source": source or {"kind": "records"},
        "sampling": None,
        "probe_template": None,
    }
    return Store._from_columns(manifest, columns)


# --------------------------------------------------------------------------------------------
# Store  ->  AutoTTS JSON


def to_autotts_json(store: Store) -> list[dict[str, Any]]:
    """The published layout, JSON-equal to the file a store was imported from."""
    qs = store.questions.to_pydict()
    br = store.branches.select(["question_idx", "tokens", "final_answer", "probe_answers"])
    bd = br.to_pydict()
    per_q: list[list[list[Any]]] = [[] for _ in range(store.num_questions)]
    for qi, tok, fin, probes in zip(
        bd["question_idx"], bd["tokens"], bd["final_answer"], bd["probe_answers"], strict=True
    ):
        per_q[qi].append([probes, tok, fin])
    out = []
    for qi in range(store.num_questions):
        branches = per_q[qi]
        trace = qs["final_answers_trace"][qi]
        item: dict[str, Any] = {
            "question": qs["question"][qi],
            "final_answers_trace": trace if trace is not None else [b[2] for b in branches],
            "each_branch": branches,
            "gold_answer": qs["gold"][qi],
            "probe_freq": store.delta,
        }
        if qs["extra"][qi]:
            item.update(json.loads(qs["extra"][qi]))
        out.append(item)
    return out


def export_json(store: Store, out: str | os.PathLike[str]) -> Path:
    out = Path(out)
    payload = json.dumps(to_autotts_json(store), ensure_ascii=False, indent=1)
    atomic_write_bytes(out, payload.encode("utf-8"))
    return out


# --------------------------------------------------------------------------------------------
# Store directory I/O


def _content_hash(directory: Path) -> str:
    h = hashlib.sha256()
    for name in TABLE_FILES:
        h.update(name.encode())
        h.update((directory / name).read_bytes())
    return "sha256:" + h.hexdigest()


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished directory into place. An existing one is swapped out first, so a reader
    finds the old directory or the new one, never a mix of both."""
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        import shutil  # here: reading a store never needs it

        shutil.rmtree(old, ignore_errors=True)


def write_store(store: Store, out: str | os.PathLike[str]) -> Path:
    """Write `store` as a directory, atomically: the tables and manifest go to a temporary sibling
    directory that is renamed into place, so a crash never leaves a half store that loads."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    import shutil  # here and in replace_dir: reading a store never needs them
    import tempfile

    import pyarrow.parquet as pq

    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        for name, table in zip(
            TABLE_FILES, (store.questions, store.branches, store.answers), strict=True
        ):
            pq.write_table(table, tmp / name, compression="zstd")
        manifest = dict(store.manifest)
        manifest["schema_version"] = SCHEMA_VERSION
        manifest["created_by"] = f"autotts {__version__}"
        manifest["num_questions"] = store.num_questions
        manifest["num_branches"] = store.branches.num_rows
        manifest["content_hash"] = _content_hash(tmp)
        # The manifest is written last: a directory without one is never taken for a store.
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    store.manifest = manifest
    store.path = str(out)
    return out


def parquet_reader_class() -> Any:
    """pyarrow's own Parquet reader class (`pyarrow._parquet.ParquetReader`, what
    `pq.ParquetFile` wraps) where it has the methods `read_parquet` calls, else None.

    The one use of pyarrow's private API here: `import pyarrow.parquet` also imports pyarrow.fs
    (every filesystem, OpenSSL), ~25 ms of a one-store `eval` that reads three local files, and
    pyarrow has no public reader without it. tests/test_store_load.py fails loudly if a pyarrow
    version drops the class, so the fallback below is never taken unnoticed."""
    try:
        from pyarrow._parquet import ParquetReader
    except ImportError:
        return None
    return ParquetReader if all(hasattr(ParquetReader, m) for m in ("open", "read_all", "close")
                                ) else None


def read_parquet(path: Path) -> pa.Table:
    """A local Parquet file as one table, as `pq.ParquetFile(path).read()` reads it, on one
    thread: a store's tables are a few MB, and starting pyarrow's thread pool costs more than
    it saves (~15 ms of a one-store eval)."""
    reader_class = parquet_reader_class()
    if reader_class is None:
        import pyarrow.parquet as pq  # not pq.read_table: it imports pandas

        with pq.ParquetFile(path) as pf:
            return pf.read(use_threads=False)
    reader = reader_class()
    reader.open(str(path))
    try:
        return reader.read_all(use_threads=False)
    finally:
        reader.close()


def _read_table(directory: Path, name: str) -> pa.Table:
    import pyarrow as pa

    f = directory / name
    if not f.is_file():
        raise StoreError(f, "missing table file")
    try:
        table = read_parquet(f)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
        raise StoreError(f, f"not a readable Parquet file ({str(e).splitlines()[0]})") from None
    expected = _schemas()[name]
    for field in expected:
        idx = table.schema.get_field_index(field.name)
        if idx < 0:
            raise StoreError(f, "missing column", field=field.name)
        if table.schema.field(idx).type != field.type:
            raise StoreError(
                f, f"expected type {field.type}, got {table.schema.field(idx).type}",
                field=field.name,
            )
    return table.select([f.name for f in expected])


def _validate_tables(directory: Path, store: Store) -> None:
    """Cheap whole-column checks so that replay never meets an inconsistent store."""
    qf, bf = directory / TABLE_FILES[0], directory / TABLE_FILES[1]
    nq = store.questions.num_rows
    if nq == 0:
        raise StoreError(qf, "no questions")
    qidx = _ints(store.questions.column("question_idx"))
    if not np.array_equal(qidx, np.arange(nq)):
        raise StoreError(qf, "question_idx must be 0..n-1 in order", field="question_idx")
    b_q = _ints(store.branches.column("question_idx"))
    if len(b_q) and (np.any(np.diff(b_q) < 0) or b_q[0] < 0 or b_q[-1] >= nq):
        raise StoreError(bf, "rows must be grouped by question 0..n-1", field="question_idx")
    counts = np.bincount(b_q, minlength=nq) if len(b_q) else np.zeros(nq, dtype=np.int64)
    nb = _ints(store.questions.column("num_branches"))
    bad = np.flatnonzero(counts != nb)
    if len(bad):
        q = int(bad[0])
        raise StoreError(
            bf, f"{counts[q]} branch rows but num_branches={nb[q]}", question=q,
            field="num_branches",
        )
    if np.any(counts == 0):
        raise StoreError(bf, "question has no branches", question=int(np.argmin(counts)))
    for col in ("tokens", "final_class", "question_idx", "branch_idx"):
        if store.branches.column(col).null_count:
            raise StoreError(bf, "contains nulls", field=col)
    tokens = _ints(store.branches.column("tokens"))
    if np.any(tokens < 0):
        r = int(np.argmin(tokens))
        raise StoreError(bf, f"negative token count {tokens[r]}", question=int(b_q[r]),
                         field="tokens")
    if _list_lengths(store.branches.column("probe_answers")) != _list_lengths(
            store.branches.column("probe_classes")):
        raise StoreError(bf, "probe_answers and probe_classes differ in length",
                         field="probe_classes")
    _validate_classes(directory, store, b_q, nq)


def _validate_classes(directory: Path, store: Store, b_q: np.ndarray, nq: int) -> None:
    """Every answer class of a branch names a row of its question's answers (or is -1, no
    answer), and each question's answer classes are 0..k-1 in order, as the writer makes them.
    A class out of range would otherwise replay as an answer no string stands for (a silent
    wrong number) or fail deep in the engine."""
    bf, af = directory / TABLE_FILES[1], directory / TABLE_FILES[2]
    a = store.answers
    for col in ("question_idx", "answer_class"):
        if a.column(col).null_count:
            raise StoreError(af, "contains nulls", field=col)
    aq, ac = _ints(a.column("question_idx")), _ints(a.column("answer_class"))
    if len(aq) and (np.any(np.diff(aq) < 0) or aq[0] < 0 or aq[-1] >= nq):
        raise StoreError(af, "rows must be grouped by question 0..n-1", field="question_idx")
    k = np.bincount(aq, minlength=nq) if len(aq) else np.zeros(nq, dtype=np.int64)
    start = np.concatenate([[0], np.cumsum(k)[:-1]])
    bad = np.flatnonzero(ac != np.arange(len(ac)) - start[aq])
    if len(bad):
        r = int(bad[0])
        raise StoreError(af, f"answer_class {ac[r]}: a question's classes must be 0..k-1 in "
                         "order", question=int(aq[r]), field="answer_class")
    probes = store.branches.column("probe_classes").combine_chunks()
    offsets = _ints(probes.offsets)
    values = _ints(probes.values)[offsets[0]:offsets[-1]]
    for field, cls, q in (("final_class", _ints(store.branches.column("final_class")), b_q),
                          ("probe_classes", values, np.repeat(b_q, np.diff(offsets)))):
        bad = np.flatnonzero((cls < -1) | (cls >= k[q]))
        if len(bad):
            r = int(bad[0])
            raise StoreError(bf, f"answer class {cls[r]} is not one of the question's "
                             f"{k[q[r]]} classes in {af.name} (or -1, no answer)",
                             question=int(q[r]), field=field)


def _list_lengths(col: pa.ChunkedArray) -> tuple[list[bool] | None, list[int]]:
    """(null mask or None, length of each non-null list): what pc.list_value_length tells,
    without importing pyarrow.compute."""
    arr = col.combine_chunks()
    lengths = np.diff(_ints(arr.offsets))
    if not arr.null_count:
        return None, lengths.tolist()
    valid = np.unpackbits(np.frombuffer(arr.buffers()[0], dtype=np.uint8), bitorder="little"
                          )[arr.offset : arr.offset + len(arr)].astype(bool)
    return valid.tolist(), lengths[valid].tolist()


def read_store_dir(path: str | os.PathLike[str]) -> Store:
    directory = Path(path)
    mf = directory / MANIFEST
    if not mf.is_file():
        raise StoreError(directory, "not a replay store (no manifest.json)")
    try:
        manifest = json.loads(mf.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(mf, f"unreadable manifest: {e}") from None
    if not isinstance(manifest, dict):
        raise StoreError(mf, "manifest must be a JSON object")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise StoreError(
            mf, f"unsupported schema version {version!r} (this autotts reads {SCHEMA_VERSION})",
            field="schema_version",
        )
    for key in ("name", "delta", "answer_mode"):
        if key not in manifest:
            raise StoreError(mf, "missing", field=key)
    if not _is_int(manifest["delta"]) or manifest["delta"] <= 0:
        raise StoreError(mf, f"expected a positive integer, got {manifest['delta']!r}",
                         field="delta")
    if manifest["answer_mode"] not in ANSWER_MODES:
        raise StoreError(mf, f"unknown answer mode {manifest['answer_mode']!r}",
                         field="answer_mode")
    tables = [_read_table(directory, name) for name in TABLE_FILES]
    store = Store(manifest, *tables, path=str(directory))
    _validate_tables(directory, store)
    return store


def verify_content_hash(store: Store) -> bool:
    return store.manifest.get("content_hash") == _content_hash(Path(store.path))


def open_store(path: str | os.PathLike[str], answers: str = "exact") -> Store:
    """A store directory, or a published AutoTTS JSON file (read in `answers` mode, exact by
    default as DESIGN §10 requires)."""
    p = Path(path)
    if p.is_dir():
        return read_store_dir(p)
    if p.is_file():
        if p.suffix.lower() == ".json":
            return read_autotts_json(p, answers=answers)
        raise StoreError(p, "expected a store directory or an AutoTTS .json file")
    raise missing_path_error(p)


def import_files(
    sources: list[str | os.PathLike[str]], out: str | os.PathLike[str], answers: str = "exact"
) -> list[Path]:
    """Import published JSON files into OUT/<model>/<benchmark> stores. All sources are validated
    before the first store is written, so a bad file leaves nothing behind."""
    stores = [read_autotts_json(s, answers=answers) for s in sources]
    names = [s.name for s in stores]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise StoreError(out, f"two sources map to the same store name {sorted(dup)[0]!r}")
    root = Path(out)
    for src, name in zip(sources, names, strict=True):
        # A store name must never escape OUT (an absolute or '..' part would, with Path's '/').
        parts = name.split("/")
        target = os.path.abspath(root / name)
        if (any(p in ("", ".", "..") or "\\" in p for p in parts)
                or os.path.commonpath([target, os.path.abspath(root)]) != os.path.abspath(root)):
            raise StoreError(src, f"store name {name!r} would be written outside --out {out}")
    return [write_store(s, root / s.name) for s in stores]
