"""The replay store: lossless import/export, readability, atomic writes, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from autotts import fsio
from autotts import store as st
from autotts.errors import StoreError
from autotts.summary import summarize
from tests.conftest import branch, make_store, reference_file, require_module


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autotts", *args], capture_output=True, text=True, cwd=cwd
    )


@pytest.mark.reference
def test_round_trip_is_lossless(reference_json: Path, tmp_path: Path):
    (out,) = st.import_files([reference_json], tmp_path)
    assert out == tmp_path / reference_json.parent.name / reference_json.stem
    loaded = st.read_store_dir(out)
    assert st.verify_content_hash(loaded)
    exported = st.export_json(loaded, tmp_path / "back.json")
    assert json.loads(exported.read_text()) == json.loads(reference_json.read_text())


@pytest.mark.reference
def test_inspect_matches_independent_recomputation(reference_json: Path):
    raw = json.loads(reference_json.read_text())
    pass1, majority_right = [], []
    for q in raw:
        gold = q["gold_answer"].strip()
        finals = [b[2].strip() for b in q["each_branch"]]
        pass1.append(sum(f == gold for f in finals) / len(finals))
        top = Counter(finals).most_common(1)[0][0]  # ties: first seen
        majority_right.append(top == gold)
    tokens = [b[1] for q in raw for b in q["each_branch"]]
    probes = [len(b[0]) for q in raw for b in q["each_branch"]]
    errs = sum(a.strip() == "ERR" for q in raw for b in q["each_branch"] for a in b[0])

    s = summarize(st.open_store(reference_json))
    assert s["questions"] == len(raw) and s["branches"] == len(tokens)
    assert s["pass_at_1"] == pytest.approx(100 * np.mean(pass1))
    assert s["majority_accuracy"] == pytest.approx(100 * np.mean(majority_right))
    assert s["tokens"]["mean"] == pytest.approx(np.mean(tokens))
    assert s["tokens"]["max"] == max(tokens)
    assert s["probes_per_branch"]["mean"] == pytest.approx(np.mean(probes))
    assert s["err_share_probes"] == pytest.approx(100 * errs / sum(probes))


@pytest.mark.reference
def test_replay_arrays_are_dense_numpy():
    data = st.open_store(reference_file("Qwen3-8B/aime24.json")).replay()
    assert data.tokens.dtype == np.int32 and data.final_class.dtype == np.int32
    assert data.probe_class.dtype == np.int32 and data.probe_offsets.dtype == np.int64
    assert data.num_questions == 30 and data.num_branches(0) == 128
    assert data.probe_offsets[-1] == len(data.probe_class)


@pytest.mark.reference
def test_cli_import_export_inspect(tmp_path: Path):
    src = reference_file("Qwen3-0.6B/aime25.json")
    r = run_cli("import", str(src), "--out", str(tmp_path / "stores"))
    assert r.returncode == 0, r.stderr
    store_dir = tmp_path / "stores" / "Qwen3-0.6B" / "aime25"
    r = run_cli("inspect", str(store_dir), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["store"] == "Qwen3-0.6B/aime25"
    r = run_cli("export", str(store_dir), "--out", str(tmp_path / "x.json"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "x.json").read_text()) == json.loads(src.read_text())


def test_tables_read_with_pandas_pyarrow_duckdb(tmp_path: Path):
    duckdb = require_module("duckdb")
    pd = require_module("pandas")
    s = make_store([("1", [branch(["1", "2"], 25, "1"), branch(["ERR"], 9, "2")])])
    out = st.write_store(s, tmp_path / "s")
    df = pd.read_parquet(out / "branches.parquet")
    assert list(df["tokens"]) == [25, 9]
    assert pq.read_table(out / "questions.parquet").column("gold").to_pylist() == ["1"]
    n = duckdb.sql(f"select count(*) from '{out / 'branches.parquet'}'").fetchall()[0][0]
    assert n == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema_version"] == st.SCHEMA_VERSION and manifest["delta"] == 10
    assert manifest["content_hash"].startswith("sha256:")


def test_answer_classes_exact_and_math():
    gold = "\\frac{1}{2}"
    branches = [branch(["0.5", "ERR"], 30, "\\frac{1}{2}"), branch([" 0.5 "], 9, "ERR")]
    ex = make_store([(gold, branches)], answers="exact")
    b = ex.branches.to_pydict()
    assert b["probe_classes"][0][0] == b["probe_classes"][1][0]  # whitespace stripped
    assert b["final_class"][0] == ex.gold_classes()[0]
    assert b["probe_classes"][0][1] == b["final_class"][1] >= 0  # ERR is an answer in exact mode
    ma = make_store([(gold, branches)], answers="math")
    b = ma.branches.to_pydict()
    assert b["probe_classes"][0][0] == b["final_class"][0] == ma.gold_classes()[0]
    assert b["probe_classes"][0][1] == b["final_class"][1] == -1  # ERR: no answer


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    good = make_store([("1", [branch(["1"], 12, "1")])])
    target = st.write_store(good, tmp_path / "store")
    real = pq.write_table

    def crash_on_branches(table, where, **kwargs):
        if str(where).endswith("branches.parquet"):  # the second table: a half-written store
            raise OSError("disk full")
        return real(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", crash_on_branches)  # store.py imports it where used
    other = make_store([("2", [branch(["2"], 12, "2")])])
    with pytest.raises(OSError):
        st.write_store(other, target)
    with pytest.raises(OSError):
        st.write_store(other, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # no temp dirs left
    assert st.read_store_dir(target).questions.column("gold").to_pylist() == ["1"]


def test_atomic_writes_get_ordinary_permissions(tmp_path: Path):
    """Not mkstemp's owner-only 0600: a new file gets 0666 minus the umask (as `open` would
    give it), a replaced one keeps its mode."""
    fresh = tmp_path / "out.json"
    fsio.atomic_write_bytes(fresh, b"{}")
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~fsio.UMASK
    fresh.chmod(0o640)
    fsio.atomic_write_bytes(fresh, b"[]")
    assert fresh.stat().st_mode & 0o777 == 0o640 and fresh.read_bytes() == b"[]"


GOOD_Q = {
    "question": "q",
    "gold_answer": "1",
    "probe_freq": 500,
    "final_answers_trace": ["1"],
    "each_branch": [[["1"], 600, "1"]],
}


def _with(**changes):
    q = json.loads(json.dumps(GOOD_Q))
    for k, v in changes.items():
        if v is KeyError:
            q.pop(k)
        else:
            q[k] = v
    return [GOOD_Q, q]


BAD_JSON = [
    ("malformed", "[{", None, "not valid JSON"),
    ("not a list", {"a": 1}, None, "expected a JSON list"),
    ("no questions", [], None, "no questions"),
    ("missing field", _with(gold_answer=KeyError), "gold_answer", "missing"),
    ("gold type", _with(gold_answer=5), "gold_answer", "expected a string"),
    ("empty branches", _with(each_branch=[]), "each_branch", "empty"),
    ("branch shape", _with(each_branch=[[["1"], 600]]), "each_branch[0]", "expected ["),
    ("negative tokens", _with(each_branch=[[["1"], -5, "1"]]), "branch_tokens", "non-negative"),
    ("float tokens", _with(each_branch=[[["1"], 5.5, "1"]]), "branch_tokens", "non-negative"),
    ("probes type", _with(each_branch=[["1", 600, "1"]]), "probe_answers", "list of strings"),
    ("probe item", _with(each_branch=[[["1", 2], 600, "1"]]), "probe_answers", "expected a str"),
    ("final type", _with(each_branch=[[["1"], 600, None]]), "final_answer", "expected a string"),
    ("delta", _with(probe_freq=0), "probe_freq", "positive integer"),
    ("delta differs", _with(probe_freq=250), "probe_freq", "differs"),
]


@pytest.mark.parametrize(("case", "payload", "field", "needle"), BAD_JSON, ids=[c[0] for c in BAD_JSON])
def test_bad_json_is_named(tmp_path: Path, case, payload, field, needle):
    src = tmp_path / "M" / "bench.json"
    src.parent.mkdir()
    src.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    with pytest.raises(StoreError) as e:
        st.import_files([src], tmp_path / "out")
    msg = str(e.value)
    assert str(src) in msg and needle in msg and "\n" not in msg
    if field is not None:
        assert "question 1" in msg and field in msg
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_bad_input_exits_nonzero_with_one_line(tmp_path: Path):
    src = tmp_path / "M" / "bench.json"
    src.parent.mkdir()
    src.write_text(json.dumps(_with(each_branch=[[["1"], -5, "1"]])))
    r = run_cli("import", str(src), "--out", str(tmp_path / "out"))
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "question 1" in lines[0] and "branch_tokens" in lines[0]
    assert "Traceback" not in r.stderr
    r = run_cli("inspect", str(tmp_path / "nowhere"))
    assert r.returncode != 0 and "no such store" in r.stderr


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return st.write_store(make_store([("1", [branch(["1"], 12, "1")])]), tmp_path / "s")


def test_unknown_schema_version(store_dir: Path):
    mf = store_dir / "manifest.json"
    m = json.loads(mf.read_text())
    m["schema_version"] = 99
    mf.write_text(json.dumps(m))
    with pytest.raises(StoreError, match="schema version 99"):
        st.read_store_dir(store_dir)


def test_truncated_parquet(store_dir: Path):
    f = store_dir / "branches.parquet"
    f.write_bytes(f.read_bytes()[:50])
    with pytest.raises(StoreError, match=r"branches\.parquet: not a readable Parquet"):
        st.read_store_dir(store_dir)


def test_foreign_parquet(store_dir: Path):
    import pyarrow as pa

    pq.write_table(pa.table({"x": [1, 2]}), store_dir / "questions.parquet")
    with pytest.raises(StoreError, match=r"questions\.parquet: field 'question_idx': missing column"):
        st.read_store_dir(store_dir)


def test_directory_without_manifest(tmp_path: Path):
    with pytest.raises(StoreError, match="not a replay store"):
        st.open_store(tmp_path)


@pytest.mark.reference
@pytest.mark.slow
def test_math_mode_import(reference_json: Path, tmp_path: Path):
    """Every reference file imports in math mode too: 'ERR' becomes no-answer (-1), equivalent
    answers merge (never split an exact class), and the store round-trips through Parquet."""
    (out,) = st.import_files([reference_json], tmp_path, answers="math")
    math_store = st.read_store_dir(out)
    exact_store = st.open_store(reference_json)
    assert math_store.answer_mode == "math"
    m, e = math_store.branches.to_pydict(), exact_store.branches.to_pydict()
    for mf, fa in zip(m["final_class"], e["final_answer"], strict=True):
        assert (mf == -1) == (fa.strip() in ("ERR", ""))
    # Two answers in one exact class are the same string, so they share a math class as well.
    pairs: dict[tuple[int, int], int] = {}
    for q, mf, ef in zip(m["question_idx"], m["final_class"], e["final_class"], strict=True):
        assert pairs.setdefault((q, ef), mf) == mf
    assert st.export_json(math_store, tmp_path / "x.json").is_file()


def _rewrite_column(path: Path, name: str, values: list) -> None:
    import pyarrow as pa

    t = pq.read_table(path)
    i = t.schema.get_field_index(name)
    pq.write_table(t.set_column(i, t.schema.field(i), pa.array(values, t.schema.field(i).type)),
                   path)


@pytest.mark.parametrize(("field", "value", "shown"), [
    ("final_class", -5, "answer class -5"),
    ("final_class", 7, "answer class 7"),
    ("probe_classes", [[0, 3]], "answer class 3"),
])
def test_answer_class_out_of_range(tmp_path: Path, field: str, value, shown: str):
    """A class that names no answer of its question is refused at load, naming file, question
    and field (it would replay as an answer no string stands for, or fail in the engine)."""
    s = st.write_store(make_store([("1", [branch(["1", "2"], 12, "1")]),
                                   ("2", [branch(["2"], 12, "2")])]), tmp_path / "s")
    f = s / "branches.parquet"
    values = pq.read_table(f).column(field).to_pylist()
    values[0] = value[0] if isinstance(value, list) else value
    _rewrite_column(f, field, values)
    with pytest.raises(StoreError, match=rf"branches\.parquet: question 0, field '{field}': "
                                         rf"{shown} is not one of the question's 2 classes"):
        st.read_store_dir(s)


def test_answer_classes_must_be_dense(store_dir: Path):
    f = store_dir / "answers.parquet"
    _rewrite_column(f, "answer_class", [c + 1 for c in pq.read_table(f)
                                        .column("answer_class").to_pylist()])
    with pytest.raises(StoreError, match=r"answers\.parquet: question 0, field 'answer_class': "
                                         r"answer_class 1: a question's classes must be 0\.\.k-1"):
        st.read_store_dir(store_dir)


def test_no_answer_class_is_accepted(tmp_path: Path):
    s = st.write_store(make_store([("1", [branch(["1"], 12, "1"), branch(["1"], 12, "1")])]),
                       tmp_path / "s")
    f = s / "branches.parquet"
    _rewrite_column(f, "final_class", [-1, 0])
    assert st.read_store_dir(s).branches.column("final_class").to_pylist() == [-1, 0]
