"""Units of the discovery loop: the agent client against the fake server, response parsing,
the trace-digest ledger against the engine, and the config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from discover_helpers import GOOD, GOOD_B, config, reply

from autotts import controller as ctl
from autotts.discover.agent import Agent, AgentError, SpendCapReached, request_key
from autotts.discover.candidates import (
    controller_name,
    extract_candidate,
    extract_candidates,
    objective,
)
from autotts.discover.config import DiscoverConfig, load_prices, price_for
from autotts.discover.digest import SearchData, ledger, make_digest, monotonicity_breaks
from autotts.discover.fakeserver import FakeOpenAI
from autotts.draws import draw_order
from autotts.engine import Episode, Question
from autotts.errors import ConfigError
from autotts.evaluate import EvalProtocol, evaluate
from autotts.fsio import append_jsonl, read_jsonl, repair_jsonl
from autotts.synth import SynthParams, generate

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello " * 50}]


def agent(tmp_path: Path, url: str, **kw: Any) -> Agent:
    cfg = config(tmp_path / "env.toml", tmp_path / "run", url, **kw)
    return Agent(cfg, tmp_path / "run" / "requests.jsonl")


# ---- the agent client -------------------------------------------------------------------------


def test_agent_retries_then_caches(tmp_path: Path) -> None:
    script = [{"status": 429, "retry_after": 0}, {"status": 503}, {"sleep": 4.0},
              {"raw": "<html>gateway</html>"}, {"content": "hi there"}]
    with FakeOpenAI(script) as server:
        a = agent(tmp_path, server.url, max_attempts=6)
        res = a.chat(MESSAGES, purpose="propose", round_no=1)
        assert server.count == 5
        assert res.content == "hi there" and not res.cached
        again = agent(tmp_path, server.url).chat(MESSAGES, purpose="propose", round_no=1)
        assert server.count == 5 and again.cached and again.content == "hi there"
    assert res.cost_usd == pytest.approx((res.prompt_tokens * 1.0 + res.completion_tokens * 2.0)
                                         / 1e6)
    log = read_jsonl(tmp_path / "run" / "requests.jsonl")
    assert [r["status"] for r in log] == ["429", "503", "timeout", "unreadable", "ok", "cache"]
    assert a.spent_usd == pytest.approx(res.cost_usd)
    # The request as sent: model, messages and the sampling parameters.
    body = server.requests[-1]
    assert body["model"] == "fake-model" and body["messages"] == MESSAGES
    assert body["max_tokens"] == 1000
    assert (tmp_path / "run" / "cache" / f"{res.key}.json").is_file()
    assert res.key == request_key("fake-model", MESSAGES, {"max_tokens": 1000})


def test_agent_gives_up_and_refuses(tmp_path: Path) -> None:
    with FakeOpenAI([{"status": 500}] * 3 + [{"status": 401, "message": "bad key"}]) as server:
        a = agent(tmp_path, server.url)
        with pytest.raises(AgentError, match="gave up after 3 attempts"):
            a.chat(MESSAGES, purpose="propose", round_no=1)
        with pytest.raises(AgentError, match="HTTP 401"):
            a.chat([*MESSAGES, {"role": "user", "content": "again"}], purpose="propose",
                   round_no=1)
        assert server.count == 4


def test_agent_offline_and_spend_cap(tmp_path: Path) -> None:
    with FakeOpenAI([reply(GOOD)]) as server:
        with pytest.raises(AgentError, match="offline replay"):
            agent(tmp_path, server.url, offline=True).chat(MESSAGES, purpose="p", round_no=1)
        a = agent(tmp_path, server.url, budget_usd=1e-9)
        with pytest.raises(SpendCapReached):
            a.chat(MESSAGES, purpose="p", round_no=1)
        assert server.count == 0


def test_agent_key_never_logged(tmp_path: Path) -> None:
    with FakeOpenAI([{"content": "ok"}]) as server:
        agent(tmp_path, server.url, api_key="sk-secret-123").chat(MESSAGES, purpose="p",
                                                                  round_no=1)
    for f in (tmp_path / "run").rglob("*"):
        if f.is_file():
            assert "sk-secret-123" not in f.read_text()


def test_reasoning_models_get_max_completion_tokens() -> None:
    cfg = DiscoverConfig(env="e", run_dir=Path("r"), model="openai/o4-mini", max_tokens=5)
    assert cfg.request_params() == {"max_completion_tokens": 5}
    cfg.model, cfg.temperature = "gpt-4.1", 0.2
    assert cfg.request_params() == {"max_tokens": 5, "temperature": 0.2}


def test_prices() -> None:
    table = load_prices('{"local": {"input": 0, "output": 0}}')
    assert price_for("local", table) == {"input": 0.0, "output": 0.0}
    assert price_for("openai/gpt-4o-mini", table) == table["gpt-4o-mini"]
    assert price_for("nobody-knows", table) is None
    with pytest.raises(ConfigError):
        load_prices('{"m": {"input": -1, "output": 0}}')


def test_config_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOTTS_MODEL", "gpt-4.1-mini")
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    monkeypatch.setenv("AUTOTTS_CRITIC", "same")
    monkeypatch.setenv("AUTOTTS_SEEDS", "sc, asc")
    cfg = DiscoverConfig.from_env("e.toml", "run", rounds=4, model=None)
    assert (cfg.model, cfg.api_key, cfg.critic, cfg.seeds, cfg.rounds) == (
        "gpt-4.1-mini", "k", "gpt-4.1-mini", ("sc", "asc"), 4)
    monkeypatch.setenv("AUTOTTS_CANDIDATES", "3")
    monkeypatch.setenv("AUTOTTS_EXECUTOR", "ray")
    cfg = DiscoverConfig.from_env("e.toml", "run", ray_address="127.0.0.1:6379")
    assert (cfg.candidates, cfg.executor, cfg.ray_address) == (3, "ray", "127.0.0.1:6379")
    for flags, match in (({"candidates": 0}, "--candidates must be between 1 and 8, got 0"),
                         ({"candidates": 9}, "--candidates must be between 1 and 8, got 9"),
                         ({"executor": "slurm"}, "--executor must be one of local, ray"),
                         ({"executor": "local", "ray_address": "h:1"}, "needs --executor ray")):
        with pytest.raises(ConfigError, match=match):
            DiscoverConfig.from_env("e.toml", "run", **flags)
    monkeypatch.setenv("AUTOTTS_WORKERS", "many")
    with pytest.raises(ConfigError, match="AUTOTTS_WORKERS"):
        DiscoverConfig.from_env("e.toml", "run")


# ---- parsing a response -------------------------------------------------------------------------


def test_extract_candidate() -> None:
    src, v = extract_candidate(f"Idea.\n\n```python\n{GOOD}```\nDone.")
    assert v is None and src == GOOD and controller_name(src) == "probe_vote"
    _, v = extract_candidate("I would rather not.")
    assert v["kind"] == "no_candidate" and "no fenced code block" in v["message"]
    _, v = extract_candidate("```python\nx = 1\n```")
    assert v["kind"] == "no_candidate" and "none a Python file" in v["message"]
    _, v = extract_candidate(f"```python\n{GOOD}```\nor\n```python\n{GOOD}```")
    assert v["kind"] == "multiple_candidates"
    _, v = extract_candidate(None)
    assert v["kind"] == "no_candidate"
    src, v = extract_candidate(f"```\n{GOOD}```")  # untagged fence
    assert v is None and src == GOOD


def test_extract_several_candidates() -> None:
    text = f"A.\n```python\n{GOOD}```\nB.\n```python\n{GOOD_B}```\n```text\nnot code\n```"
    files, v = extract_candidates(text, 3)
    assert v is None and files == [GOOD, GOOD_B]  # in the order of the response
    files, v = extract_candidates(text, 1)
    assert files == [] and v["kind"] == "multiple_candidates"
    assert "exactly one complete controller file" in v["message"]
    _, v = extract_candidates("no code", 4)
    assert v["kind"] == "no_candidate" and "1 to 4 complete controller files" in v["message"]


# ---- digests ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store() -> Any:
    return generate(SynthParams(questions=6, branches=24, seed=7))


def _check_ledger(store: Any, spec: ctl.ControllerSpec, beta: float, episode_cls: type,
                  kappa: int = 0) -> tuple[int, int]:
    data = store.replay()
    resolved = total = 0
    for q in range(data.num_questions):
        question = Question(data, q)
        for draw in range(3):
            order = draw_order("shuffle", draw, q, question.num_branches)
            ep = episode_cls(question, order, probe_cost=kappa, trace=True)
            spec.make(spec.config(beta)).run(ep)
            led = ledger(ep.trace_events(), question, order, kappa)
            total += 1
            if led is None:
                continue
            resolved += 1
            assert led["opened"] == ep.num_opened and led["tokens"] == ep.tokens
            assert np.array_equal(led["depth"], ep.depths)
            assert np.array_equal(led["pruned"], ep.pruned)
            assert np.array_equal(led["finished"], ep.finished)
    return resolved, total


@pytest.mark.parametrize("kappa", [0, 7])
def test_ledger_matches_the_engine(store: Any, tmp_path: Path, kappa: int) -> None:
    good = tmp_path / "good.py"
    good.write_text(GOOD)
    for spec, beta in ((ctl.load(str(good)), 0.7), (ctl.load("sc"), 0.3),
                       (ctl.load("esc"), 0.5)):
        resolved, total = _check_ledger(store, spec, beta, Episode, kappa)
        assert resolved == total
    # Parallel-Probe prunes in batches: the engine's trace names the branches, so it resolves too.
    pp = ctl.load("parallel_probe")
    resolved, total = _check_ledger(store, pp, 1.0, Episode, kappa)
    assert resolved == total


def test_digest_figures(store: Any, tmp_path: Path) -> None:
    proto = EvalProtocol(draws=4)
    ev = evaluate("sc", [store], [0.0, 0.5], proto, episodes=True, traces=True)
    search = SearchData([store], proto)
    from autotts.discover.digest import attach_answers

    attach_answers(ev.traces, ev.episodes)
    d = make_digest(search, ev.rows, ev.episodes, ev.traces)["stores"][store.name]
    assert d["episodes"] == 2 * 4 * 6 and d["traced_episodes"] == d["resolved_episodes"]
    # Self-consistency answers with the majority of what it opened: it can never be wrong while
    # the opened branches' majority is right.
    assert d["wrong_opened_majority_right"]["episodes"] == 0
    assert d["stop_reasons"] == [["read_n", 100.0]]
    wrong = [e for e in ev.episodes if not e["correct"]]
    assert d["wrong_share"] == pytest.approx(100 * len(wrong) / len(ev.episodes))
    # A pool majority that is right means more width helps: sc at β=0 (one branch) shows it.
    gold = store.gold_classes()
    data = store.replay()
    expect = 0
    for e in wrong:
        q = e["question"]
        finals = data.final_class[data.branch_offsets[q]:data.branch_offsets[q + 1]]
        order = draw_order("shuffle", e["draw"], q, len(finals))
        from autotts.summary import majority_first_seen

        expect += majority_first_seen(finals[order]) == gold[q]
    assert d["wrong_pool_majority_right"]["episodes"] == expect


def test_monotonicity_breaks_and_objective() -> None:
    rows = [{"store": "s", "beta": b, "tokens": t, "tokens_se": 1.0, "accuracy": a}
            for b, t, a in ((0.0, 100.0, 10.0), (0.5, 90.0, 20.0), (1.0, 1000.0, 30.0))]
    br = monotonicity_breaks(rows)["s"]
    assert br == [{"beta_from": 0.0, "beta_to": 0.5, "tokens_from": 100.0, "tokens_to": 90.0,
                   "significant": True}]
    obj, per = objective(rows, ["s"], (100.0, 1000.0))
    assert per["s"] == obj and 20.0 <= obj <= 30.0
    assert objective(rows, ["s", "missing"], (100.0, 1000.0))[0] is None


def test_jsonl_torn_tail(tmp_path: Path) -> None:
    p = tmp_path / "log.jsonl"
    append_jsonl(p, {"a": 1})
    with open(p, "ab") as f:
        f.write(b'{"a": 2, "tor')
    assert read_jsonl(p) == [{"a": 1}]
    repair_jsonl(p)
    append_jsonl(p, {"a": 3})
    assert read_jsonl(p) == [{"a": 1}, {"a": 3}]
    assert json.loads(p.read_text().splitlines()[-1]) == {"a": 3}


def test_run_dir_lock(tmp_path: Path) -> None:
    from autotts.discover.rundir import RunDir

    first = RunDir(tmp_path / "run")
    first.prepare({"a": 1})
    with pytest.raises(ConfigError, match="in use"):
        RunDir(tmp_path / "run").prepare({"a": 1})
    first.unlock()
    second = RunDir(tmp_path / "run")
    assert second.prepare({"a": 1}) is True  # resuming
    second.unlock()
    with pytest.raises(ConfigError, match="different run"):
        RunDir(tmp_path / "run").prepare({"a": 2})
