"""The collector on the deterministic fake engine: intervals, probes, thinking cap, resume, shards,
merge, question files and the CLI. The real vLLM engine and server: tests/test_collect_vllm.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from autotts.collect import (
    CollectConfig,
    FakeEngine,
    FakeScript,
    ProtocolConfig,
    QuestionRun,
    collect,
    last_boxed,
    merge,
    probe_answer,
)
from autotts.collect.engines import EngineError, Request, Sampling, parse_prefix_metrics
from autotts.collect.protocol import (
    branch_seed,
    lowest_window_mean,
    token_confidence,
)
from autotts.collect.questions import QuestionError, gpqa_question, load_questions, read_jsonl
from autotts.collect.writer import CollectError, WorkDir, parse_shard
from autotts.errors import ConfigError
from autotts.paths import data_dir
from autotts.store import read_store_dir
from tests.conftest import require

SUFFIX = "</think>\n\nThe final answer is \\boxed{"


def run_questions(engine: FakeEngine, runs: list[QuestionRun]) -> None:
    """Drive question runs to completion, one engine call per round."""
    while not all(r.done for r in runs):
        jobs = [j for r in runs for j in r.next_requests()]
        comps = engine.generate([j.request for j in jobs])
        for j, c in zip(jobs, comps, strict=True):
            j.done(c)


def run_one(script: FakeScript, **kw) -> tuple[QuestionRun, FakeEngine]:
    eng = FakeEngine(script=script, max_model_len=kw.pop("max_model_len", None))
    cfg = ProtocolConfig(**{"n": 2, "delta": 32, "max_thinking_tokens": 1000,
                            "max_answer_tokens": 200, **kw})
    prompt, _ = eng.chat_prompt([{"role": "user", "content": "q?"}], {})
    run = QuestionRun("q0", prompt, cfg, encode=eng.encode, decode=eng.decode,
                      max_model_len=eng.max_model_len)
    run_questions(eng, [run])
    return run, eng


# ---- answer extraction -----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "answer"), [
    ("42} and more", "42"),
    (" \\frac{1}{2} }. So", "\\frac{1}{2}"),
    ("\\{1, 2\\}} done", "\\{1, 2\\}"),
    ("{a}{b}} x", "{a}{b}"),
    ("}", ""),
    ("no closing brace at all", "ERR"),
    ("\\frac{1}{2", "ERR"),
    ("", "ERR"),
])
def test_probe_answer_cuts_at_the_matching_brace(text: str, answer: str):
    assert probe_answer(text) == answer


def test_last_boxed_takes_the_last_complete_box():
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{3}{4}} end") == "\\frac{3}{4}"
    assert last_boxed("\\boxed{7} and \\boxed{unclosed") == "7"
    assert last_boxed("no box") == "ERR"


# ---- intervals, probes, thinking cap ---------------------------------------------------------


@pytest.mark.parametrize(("think_len", "probes"), [(100, 3), (64, 2), (63, 1), (32, 1), (31, 0)])
def test_probes_follow_full_intervals_while_thinking(think_len: int, probes: int):
    # `think_len` thinking tokens, then </think> at index think_len: an interval is probed only when
    # all its Δ tokens were generated before </think>.
    run, eng = run_one(FakeScript(think_len=lambda s: think_len))
    res = run.result()
    for b in res["branches"]:
        assert len(b["probes"]) == probes
        assert b["thinking_tokens"] == think_len + 1
        assert not b["forced_close"] and b["think_closed"]
        assert b["final"] == str(b["seed"] % 3)
        assert b["finish_reason"] == "stop"
        assert len(b["probes"]) * 32 <= b["tokens"]
    # The probe of interval k runs on exactly the branch prefix after k intervals + the suffix,
    # greedily, in the same engine call as interval k+1.
    suffix = eng.encode(SUFFIX)
    for call in eng.calls:
        greedy = [r for r in call if r.sampling is None]
        sampled = {tuple(r.prompt) for r in call if r.sampling is not None}
        for r in greedy:
            assert list(r.prompt[-len(suffix):]) == suffix
            assert r.max_tokens == 32
            assert tuple(r.prompt[: -len(suffix)]) in sampled
        assert all(r.max_tokens <= 32 for r in call)


def test_probe_answers_are_extracted_per_interval():
    script = FakeScript(think_len=lambda s: 200,
                        probe=lambda n: ["\\frac{1}{2}} x", "no brace", "{3}} y"][min(n // 32, 3) - 1]
                        if n // 32 <= 3 else "9}")
    run, _ = run_one(script)
    probes = run.result()["branches"][0]["probes"]
    assert probes[:4] == ["\\frac{1}{2}", "ERR", "{3}", "9"]
    assert len(probes) == 6  # 200 thinking tokens: 6 full intervals


def test_thinking_cap_closes_the_think_block():
    run, eng = run_one(FakeScript(think_len=lambda s: 10_000), max_thinking_tokens=80,
                       think_close="\n</think>\n\n")
    for b in run.result()["branches"]:
        assert b["forced_close"] and b["think_closed"]
        assert b["thinking_tokens"] == 80
        assert len(b["probes"]) == 2  # intervals 32, 32 are full; the last 16 is not
        # 80 thinking tokens and the forced "\n</think>"; the forced "\n\n" and what the model
        # writes after them are answer tokens.
        assert b["tokens"] == 80 + 2 + b["answer_tokens"] and b["answer_tokens"] > 2
        assert b["final"] == str(b["seed"] % 3)
    first = eng.calls[0]
    assert all(r.max_tokens == 32 for r in first)


def test_answer_budget_and_context_limit_end_branches_with_length():
    run, _ = run_one(FakeScript(think_len=lambda s: 40, answer=lambda s: "x" * 500),
                     max_answer_tokens=50)
    for b in run.result()["branches"]:
        assert b["finish_reason"] == "length" and b["answer_tokens"] == 50
        assert b["final"] == "ERR"
    run, _ = run_one(FakeScript(think_len=lambda s: 10_000), max_model_len=150)
    for b in run.result()["branches"]:
        assert b["finish_reason"] == "length"
        assert b["tokens"] + len(run.prompt) <= 150


def test_branch_seeds_are_stable_and_distinct():
    seeds = {branch_seed(0, "q1", b) for b in range(128)}
    assert len(seeds) == 128
    assert branch_seed(0, "q1", 5) == branch_seed(0, "q1", 5) != branch_seed(1, "q1", 5)
    assert branch_seed(0, "q1", 5) != branch_seed(0, "q2", 5)


def test_signals_and_confidence():
    assert token_confidence([-1.0, -3.0]) == 2.0
    vals = [1.0, 2.0, 3.0, 0.5, 0.5]
    assert lowest_window_mean(vals[:2], 0, 3, float("inf")) == 1.5  # fewer than a window
    assert lowest_window_mean(vals, 0, 3, float("inf")) == pytest.approx(4 / 3)
    assert lowest_window_mean(vals, 3, 2, 9.0) == pytest.approx(0.5)
    run, _ = run_one(FakeScript(think_len=lambda s: 70), signals=("tokens", "logprobs", "confidence"),
                     top_logprobs=3)
    rows = run.signal_rows()
    b0 = [r for r in rows if r["branch_idx"] == 0]
    assert [r["phase"] for r in b0][:3] == ["think", "think", "think"]
    assert [r["probe_idx"] for r in b0][:3] == [0, 1, None]
    assert b0[0]["probe_text"] is not None and len(b0[0]["token_ids"]) == 32
    assert all(len(r["logprobs"]) == r["num_tokens"] for r in b0)
    assert all(r["confidence"] > 0 for r in b0)


def test_protocol_config_is_checked():
    with pytest.raises(ConfigError, match="delta"):
        ProtocolConfig(delta=0).check()
    with pytest.raises(ConfigError, match="signal"):
        ProtocolConfig(signals=("nope",)).check()
    with pytest.raises(ConfigError, match="temperature"):
        ProtocolConfig(sampling=Sampling(temperature=0)).check()
    with pytest.raises(ConfigError, match="think_close"):
        ProtocolConfig(think_close="no end tag").check()


# ---- question files --------------------------------------------------------------------------


def write_questions(path: Path, n: int = 5) -> Path:
    path.write_text("".join(
        json.dumps({"id": f"q{i}", "question": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n"
        for i in range(n)
    ))
    return path


def test_both_jsonl_formats(tmp_path: Path):
    simple = read_jsonl(write_questions(tmp_path / "s.jsonl"))
    assert [q.gold for q in simple.questions] == ["0", "2", "4", "6", "8"]
    assert simple.questions[1].id == "q1" and simple.name == "s"
    shared = tmp_path / "shared.jsonl"
    shared.write_text(
        json.dumps({"idx": 7, "prompt": "P?", "reference_solution": "so 3 #### 3", "source": "x"})
        + "\n\n" + json.dumps({"idx": 8, "prompt": "Q?", "reference_solution": "B"}) + "\n"
    )
    qs = read_jsonl(shared)
    assert [(q.id, q.gold) for q in qs.questions] == [("7", "3"), ("8", "B")]


def test_the_shared_question_sets_load():
    for name in ("math_test", "gsm8k_test", "gpqa_test"):
        f = require(data_dir() / "questions" / f"{name}.jsonl")
        qs = read_jsonl(f)
        assert len(qs.questions) > 100 and all(q.gold for q in qs.questions)
    assert read_jsonl(data_dir() / "questions" / "gsm8k_test.jsonl").questions[0].gold == "18"


@pytest.mark.parametrize(("content", "message"), [
    ('{"id": 1, "question": "a", "answer": "1"}\n{"id": 2, "question": "b"', ":2: not valid JSON"),
    ('{"id": 1, "answer": "1"}\n', ":1: field 'question': missing"),
    ('{"id": 1, "question": "a"}\n', ":1: field 'answer': missing"),
    ('{"id": 1, "question": "", "answer": "1"}\n', ":1: field 'question': expected a non-empty"),
    ('{"id": 1, "question": "a", "answer": [1]}\n', ":1: field 'answer': expected a string"),
    ('{"id": 1, "question": "a", "answer": "1"}\n{"id": 1, "question": "b", "answer": "2"}\n',
     ":2: field 'id': duplicate id '1' (first on line 1)"),
    ("[1, 2]\n", ":1: expected a JSON object"),
    ("\n\n", "no questions"),
])
def test_bad_question_files_fail_with_file_line_and_field(tmp_path: Path, content: str, message: str):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(QuestionError) as e:
        read_jsonl(f)
    assert str(e.value).startswith(str(f)) and message in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_source_and_unreachable_benchmark(monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(QuestionError, match=r"unknown question source 'aime23'.*aime24"):
        load_questions("aime23")
    with pytest.raises(QuestionError, match="no such question file"):
        load_questions("missing/file.jsonl")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(QuestionError) as e:
        load_questions("aime24")
    msg = str(e.value)
    assert "HuggingFaceH4/aime_2024" in msg and "--questions FILE" in msg and "\n" not in msg


def test_gpqa_options_are_shuffled_by_a_fixed_seed():
    row = {"Question": "Which?", "Correct Answer": "right", "Incorrect Answer 1": "w1",
           "Incorrect Answer 2": "w2", "Incorrect Answer 3": "w3"}
    text, gold = gpqa_question(row, "rec1")
    assert (text, gold) == gpqa_question(row, "rec1")
    assert f"({gold}) right" in text
    golds = {gpqa_question(row, f"rec{i}")[1] for i in range(40)}
    assert golds == set("ABCD")


# ---- runs, resume, shards, merge -------------------------------------------------------------


PROTO = ProtocolConfig(n=4, delta=32, max_thinking_tokens=160, max_answer_tokens=64,
                       signals=("tokens", "confidence"), top_logprobs=3)


def config(tmp_path: Path, out: str, **kw) -> CollectConfig:
    q = tmp_path / "qs.jsonl"
    if not q.exists():
        write_questions(q)
    return CollectConfig(model="org/fake-model", questions=str(q), out=tmp_path / out,
                         protocol=PROTO, backend="fake", **kw)


def same_store(a: Path, b: Path) -> None:
    sa, sb = read_store_dir(a), read_store_dir(b)
    assert sa.manifest == sb.manifest
    for name in ("questions", "branches", "answers"):
        assert getattr(sa, name).equals(getattr(sb, name))
    for extra in ("signals.parquet", "branch_info.parquet"):
        assert pq.read_table(a / extra).equals(pq.read_table(b / extra))


def test_collect_writes_a_replayable_store(tmp_path: Path):
    res = collect(config(tmp_path, "full"))
    assert res.store == tmp_path / "full" and res.done_now == res.total == 5
    s = read_store_dir(res.store)
    m = s.manifest
    assert m["name"] == "fake-model/qs" and m["delta"] == 32 and m["answer_mode"] == "math"
    assert m["sampling"]["n"] == 4 and m["sampling"]["temperature"] == 0.7
    assert m["probe_template"]["suffix"] == SUFFIX
    assert m["collect"]["template_hash"].startswith("sha256:")
    assert {"vllm_version", "revision", "backend", "max_thinking_tokens"} <= set(m["collect"])
    data = s.replay()
    assert data.num_questions == 5 and all(data.num_branches(q) == 4 for q in range(5))
    assert json.loads(s.questions.column("extra")[0].as_py())["id"] == "q0"
    assert res.stats.probe_cached > 0  # probes re-read cached prefixes


def test_interrupted_run_resumes_to_the_same_store(tmp_path: Path):
    collect(config(tmp_path, "full"))
    with pytest.raises(EngineError):
        collect(config(tmp_path, "resumed", inflight=1), engine=FakeEngine(fail_after=15))
    done = WorkDir.for_store(tmp_path / "resumed").finished()
    assert 0 < len(done) < 5 and not (tmp_path / "resumed").exists()
    res = collect(config(tmp_path, "resumed", inflight=2))
    assert res.done_now == 5 - len(done)
    same_store(tmp_path / "full", tmp_path / "resumed")
    # Nothing left to do: the engine is not even started.
    again = collect(config(tmp_path, "resumed"), engine=FakeEngine(fail_after=0))
    assert again.done_now == 0 and again.store is not None


def test_rerun_with_other_settings_is_refused(tmp_path: Path):
    collect(config(tmp_path, "full"), stop_after=1)
    cfg = config(tmp_path, "full")
    cfg.protocol = ProtocolConfig(n=4, delta=64)
    with pytest.raises(CollectError, match=r"other settings \(protocol.delta: 32 vs 64\)"):
        collect(cfg)


def test_shards_share_a_work_dir_or_merge(tmp_path: Path):
    collect(config(tmp_path, "full"))
    # Shards writing to the same work directory: the last one to finish writes the store.
    r0 = collect(config(tmp_path, "shared", shard=(0, 2)))
    assert r0.store is None and r0.done_now == 3
    r1 = collect(config(tmp_path, "shared", shard=(1, 2)))
    assert r1.done_now == 2 and r1.store is not None
    same_store(tmp_path / "full", tmp_path / "shared")
    # Shards on different hosts: separate work directories joined by merge.
    for i in range(3):
        collect(config(tmp_path, f"host{i}", shard=(i, 3)))
    with pytest.raises(CollectError, match="1 of 5 questions are not finished"):
        merge([tmp_path / "host0.collect", tmp_path / "host1.collect"], tmp_path / "merged")
    merge([tmp_path / f"host{i}.collect" for i in range(3)], tmp_path / "merged")
    same_store(tmp_path / "full", tmp_path / "merged")


def test_merge_refuses_different_collections(tmp_path: Path):
    collect(config(tmp_path, "a", shard=(0, 2)))
    other = config(tmp_path, "b", shard=(1, 2))
    other.protocol = ProtocolConfig(n=4, delta=32, seed=1)
    collect(other)
    with pytest.raises(CollectError, match="different collections"):
        merge([tmp_path / "a.collect", tmp_path / "b.collect"], tmp_path / "m")


def test_parse_shard():
    assert parse_shard("1/4") == (1, 4) and parse_shard(None) is None
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(ConfigError):
            parse_shard(bad)


def test_kv_budget_bounds_each_round_without_changing_the_data(tmp_path: Path):
    collect(config(tmp_path, "full"))
    eng = FakeEngine(kv_tokens=1500)
    collect(config(tmp_path, "budget"), engine=eng)
    same_store(tmp_path / "full", tmp_path / "budget")
    for call in eng.calls:
        main = [r for r in call if r.sampling is not None]
        cost = sum(len(r.prompt) + r.max_tokens for r in main)
        probes = sum(r.max_tokens + 64 for r in call if r.sampling is None)
        assert cost + probes <= 0.9 * 1500 or len(call) == 1
    assert max(len(c) for c in eng.calls) < 20  # 5 questions x 4 branches never all at once


def test_cache_config_metric_parse():
    from autotts.collect.engines import parse_cache_tokens

    text = ('vllm:cache_config_info{block_size="16",cache_dtype="auto",'
            'num_gpu_blocks="2048",prefix_caching="True"} 1.0\n')
    assert parse_cache_tokens(text) == 32768 and parse_cache_tokens("") is None


def test_prefix_metrics_parse():
    text = ('# HELP x\nvllm:prefix_cache_queries_total{engine="0",model_name="m"} 120.0\n'
            'vllm:prefix_cache_hits_total{engine="0",model_name="m"} 64.0\n')
    assert parse_prefix_metrics(text) == {"prefix_cache_queries": 120.0, "prefix_cache_hits": 64.0}


def test_engine_request_defaults():
    r = Request([1, 2], 5)
    assert r.sampling is None and r.logprobs == 0 and not r.ignore_eos


# ---- command line ----------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "autotts", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_cli_collect_then_eval(tmp_path: Path):
    q = write_questions(tmp_path / "qs.jsonl", 3)
    out = tmp_path / "store"
    args = ["collect", "--model", "fake", "--questions", str(q), "--out", str(out),
            "--backend", "fake", "--n", "8", "--delta", "32", "--max-thinking-tokens", "128",
            "--signals", "confidence"]
    p = cli(*args)
    assert p.returncode == 0, p.stderr
    assert "3 question(s) collected now, 3/3 finished" in p.stdout and f"wrote {out}" in p.stdout
    p = cli(*args)
    assert p.returncode == 0 and "0 question(s) collected now" in p.stdout
    p = cli("eval", "--controller", "sc", "--store", str(out), "--draws", "3",
            "--json", str(tmp_path / "r.json"))
    assert p.returncode == 0, p.stderr
    rows = json.loads((tmp_path / "r.json").read_text())
    assert rows and all(r["questions"] == 3 for r in rows)


@pytest.mark.parametrize(("extra", "message"), [
    (["--shard", "2/2"], "0-based"),
    (["--delta", "0"], "delta must be a positive integer"),
    (["--backend", "tpu"], "--backend must be vllm or openai"),
    (["--backend", "openai"], "--base-url"),
])
def test_cli_collect_errors_are_one_line(tmp_path: Path, extra: list[str], message: str):
    q = write_questions(tmp_path / "qs.jsonl", 2)
    p = cli("collect", "--model", "fake", "--questions", str(q), "--out", str(tmp_path / "s"),
            "--backend", "fake", *extra)
    assert p.returncode == 2 and message in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_cli_bad_question_file_is_one_line(tmp_path: Path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"question": "a", "answer": "1"}\n{"question": 3, "answer": "1"}\n')
    p = cli("collect", "--model", "fake", "--questions", str(f), "--out", str(tmp_path / "s"),
            "--backend", "fake")
    assert p.returncode == 2
    assert p.stderr.strip() == f"error: {f}:2: field 'question': expected a non-empty string"


def test_cli_collect_merge(tmp_path: Path):
    q = write_questions(tmp_path / "qs.jsonl", 3)
    for i in range(2):
        p = cli("collect", "--model", "fake", "--questions", str(q), "--out",
                str(tmp_path / f"h{i}"), "--backend", "fake", "--n", "4", "--delta", "32",
                "--shard", f"{i}/2")
        assert p.returncode == 0, p.stderr
    p = cli("collect-merge", str(tmp_path / "h0.collect"), str(tmp_path / "h1.collect"),
            "--out", str(tmp_path / "m"))
    assert p.returncode == 0, p.stderr
    assert read_store_dir(tmp_path / "m").num_questions == 3
