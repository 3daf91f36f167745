"""The store's load path builds and reads its Arrow columns through buffers (so that a one-store
`autotts eval` never imports pandas or pyarrow.compute); these tests hold it to what pyarrow's own
conversions give."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from autotts import store as S


def _records() -> list[dict]:
    return [
        {"question": "q0 ünïcode", "gold_answer": "7", "probe_freq": 500,
         "each_branch": [[["7", "ERR", " 7 "], 1200, "7"], [[], 300, ""]],
         "final_answers_trace": ["7", "x"], "extra_key": {"a": [1, 2]}},
        {"question": "", "gold_answer": "\u2003ERR\u00a0", "probe_freq": 500,
         "each_branch": [[["\x1c3"], 900, "3"], [["4", "4"], 1000, "4 "]]},
        {"question": "q2", "gold_answer": "1", "probe_freq": 500,
         "each_branch": [[["1"] * 5, 2600, "1"]]},
    ]


def test_tables_equal_pyarrows_own_build(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = S.from_autotts_records(_records(), model="m", benchmark="b")
    assert fast.questions.num_rows == 3  # its tables are built now, before _table is replaced
    monkeypatch.setattr(S, "_table", lambda cols, schema: pa.Table.from_pydict(cols, schema=schema))
    slow = S.from_autotts_records(_records(), model="m", benchmark="b")
    for name in ("questions", "branches", "answers"):
        a, b = getattr(fast, name), getattr(slow, name)
        assert a.schema.equals(b.schema)
        assert a.equals(b), name
    # the nullable columns hold real nulls (not empty values) where the builder got None
    assert fast.questions.column("final_answers_trace").null_count == 2
    assert fast.questions.column("extra").null_count == 2


def test_ints_matches_to_numpy_on_chunked_and_sliced_columns() -> None:
    col = pa.chunked_array([pa.array([1, 2, 3], pa.int32()), pa.array([4, 5], pa.int32())])
    assert np.array_equal(S._ints(col), col.to_numpy())
    sliced = pa.array(np.arange(10, dtype=np.int64)).slice(3, 4)
    assert np.array_equal(S._ints(sliced), [3, 4, 5, 6])
    with_nulls = pa.array([1, None, 3], pa.int32())
    got = S._ints(with_nulls)  # nulls take pyarrow's way: the same floats with nan
    assert np.isnan(got[1]) and got[0] == 1.0


def test_strip_trims_what_arrow_trims() -> None:
    texts = [" ERR ", "\u2003ERR\u00a0", "\x1cERR\x1f", "\u180eERR", "ERR\u200b", "\u3000", "",
             "E RR", "\x85ERR\u2028"]
    arrow = pc.utf8_trim_whitespace(pa.array(texts)).to_pylist()
    assert arrow == [t.strip() for t in texts]


def test_replay_of_a_sliced_store_keeps_its_probes() -> None:
    st = S.from_autotts_records(_records(), model="m", benchmark="b")
    full = st.replay()
    st.branches = pa.concat_tables([st.branches.slice(0, 2), st.branches.slice(2)])
    again = st.replay()
    assert np.array_equal(full.probe_class, again.probe_class)
    assert np.array_equal(full.probe_offsets, again.probe_offsets)
    assert full.err_class.tolist() == again.err_class.tolist()
    # q0 has 'ERR' (class 1) and '' (class 2): both the model's "no answer" output, read as one
    # class, the first seen (docs/semantics.md); its empty final (branch 1) reads as 'ERR'
    assert full.err_class.tolist() == [1, -1, -1]
    assert full.final_class.tolist()[:2] == [0, 1] and 2 not in full.probe_class.tolist()


def test_list_lengths_see_nulls() -> None:
    a = pa.chunked_array([pa.array([["x"], None, []], pa.list_(pa.string()))])
    b = pa.chunked_array([pa.array([[1], [], []], pa.list_(pa.int32()))])
    assert S._list_lengths(a) != S._list_lengths(b)  # as pc.list_value_length(...).equals says
    assert not pc.list_value_length(a).equals(pc.list_value_length(b))


def _replay_fields(st: S.Store) -> dict[str, object]:
    r = st.replay()
    out: dict[str, object] = {f: getattr(r, f) for f in r.__dataclass_fields__}
    out["gold"], out["num_questions"] = st.gold_classes(), st.num_questions
    return out


def test_a_json_store_replays_its_columns_as_its_tables() -> None:
    """A store read from JSON replays and scores from the columns it was parsed into, before any
    table is built; the arrays are the ones its tables give, dtype for dtype."""
    records = _records()
    records[2]["each_branch"][0][2] = "ERR"  # an 'ERR' class in another question
    from_columns = S.from_autotts_records(records, model="m", benchmark="b")
    got = _replay_fields(from_columns)
    from_tables = S.from_autotts_records(records, model="m", benchmark="b")
    from_tables.branches  # noqa: B018  (builds the tables: replay reads them from now on)
    want = _replay_fields(from_tables)
    assert got.keys() == want.keys()
    for k, v in want.items():
        if isinstance(v, np.ndarray):
            assert v.dtype == got[k].dtype and np.array_equal(v, got[k]), k
        else:
            assert v == got[k], k
    assert got["err_class"].tolist() == [1, -1, 1]
    # a later call gets arrays of its own, as from tables
    assert not np.shares_memory(from_columns.replay().probe_class, got["probe_class"])


def test_replacing_a_table_of_a_json_store_is_what_replay_reads() -> None:
    st = S.from_autotts_records(_records(), model="m", benchmark="b")
    st.branches = st.branches.slice(0, 2)  # question 0's branches only
    assert st.replay().branch_offsets.tolist() == [0, 2, 2, 2]


def test_a_copy_of_a_store_has_tables_of_its_own() -> None:
    import copy

    st = S.from_autotts_records(_records(), model="m", benchmark="b")
    other = copy.copy(st)
    other.branches = other.branches.slice(0, 2)
    assert st.branches.num_rows == 5 and other.branches.num_rows == 2
    assert st == copy.copy(st) and st != other


def test_a_json_store_is_read_and_replayed_without_pyarrow(tmp_path) -> None:
    src = tmp_path / "m" / "b.json"
    src.parent.mkdir()
    src.write_text(json.dumps(_records()))
    code = (
        "import sys\n"
        "from autotts.store import open_store\n"
        f"s = open_store({str(src)!r}); s.replay(); s.gold_classes(); s.num_questions\n"
        "print('pyarrow' in sys.modules)\n"
        "s.questions\n"
        "print('pyarrow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


@pytest.mark.parametrize(("branches", "where"), [
    ([[["1"], 5, "1"], [["1"], True, "1"]], "each_branch[1][1] (branch_tokens)"),
    ([[["1"], 5, 1], [["1", 2], 5, "1"]], "each_branch[0][2] (final_answer)"),
    ([[["1"], 5, "1"], [["1"], 5, "1"], [["1", None], 5, "1"]], "each_branch[2][0] (probe_answers)[1]"),
    ([[["1"], 5, "1"], ("1", 5, "1")], "each_branch[1]"),
    ([[["1"], 5, "1"], [["1"], 2**31, "1"]], "each_branch[1][1] (branch_tokens)"),
])
def test_the_first_bad_branch_field_is_named(branches: list, where: str) -> None:
    records = [{"question": "q", "gold_answer": "1", "probe_freq": 5, "each_branch": branches}]
    with pytest.raises(S.StoreError) as e:
        S.from_autotts_records(records, model="m", benchmark="b")
    assert f"question 0, field '{where}':" in str(e.value), str(e.value)


def test_str_and_int_subclasses_are_read_as_before() -> None:
    class Tokens(int):
        pass

    class Answer(str):
        pass

    records = _records()
    records[0]["each_branch"][0] = [[Answer("7")], Tokens(1200), Answer("7")]
    st = S.from_autotts_records(records, model="m", benchmark="b")
    assert st.replay().tokens.tolist() == [1200, 300, 900, 1000, 2600]


def test_load_path_imports_neither_pandas_nor_compute(tmp_path) -> None:
    st = S.from_autotts_records(_records(), model="m", benchmark="b")
    S.write_store(st, tmp_path / "s")
    code = (
        "import sys, json\n"
        "from autotts.store import open_store, read_autotts_json\n"
        f"s = open_store({str(tmp_path / 's')!r}); s.replay(); s.gold_classes()\n"
        "print(json.dumps(sorted(m for m in ('pandas', 'pyarrow.compute', 'pyarrow.fs')\n"
        "                        if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_parquet_is_read_as_parquet_file_reads_it(tmp_path) -> None:
    """The store reads Parquet through pyarrow's reader class, sparing `import pyarrow.parquet`
    (and with it pyarrow.fs); it must be there in the pyarrow installed, and read what
    `pq.ParquetFile` reads, schema metadata included."""
    import pyarrow.parquet as pq

    assert S.parquet_reader_class() is not None, (
        "pyarrow._parquet.ParquetReader (open, read_all, close) is gone in pyarrow "
        f"{pa.__version__}: update autotts/store.py:parquet_reader_class")
    st = S.from_autotts_records(_records(), model="m", benchmark="b")
    S.write_store(st, tmp_path / "s")
    for name in S.TABLE_FILES:
        got = S.read_parquet(tmp_path / "s" / name)
        with pq.ParquetFile(tmp_path / "s" / name) as pf:
            want = pf.read()
        assert got.schema.equals(want.schema, check_metadata=True) and got.equals(want), name
