"""The discovery loop end to end (issue 6), with no network: a real HTTP server on 127.0.0.1
speaks the OpenAI chat-completions protocol and serves scripted responses to the real `openai`
client; candidates run in the real sandbox."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from discover_helpers import (
    BROKEN,
    FORBIDDEN,
    GOOD,
    GOOD_B,
    assert_same_rounds,
    baseline_cache,  # noqa: F401 (fixture)
    cli_env,
    config,
    make_env,
    reply,
    several,
)

import autotts.store as store_mod
from autotts.discover import first_prompt, read_run_dir, run_discovery, write_run_report
from autotts.discover.fakeserver import FakeOpenAI
from autotts.errors import ConfigError
from autotts.fsio import read_jsonl

ROOT = Path(__file__).resolve().parents[1]

# Round 1: a 429, then a good controller. Round 2: a timeout, then a broken one (an exception at
# run time). Round 3: a malformed response (no choices).
SCRIPT: list[dict[str, Any]] = [
    {"status": 429, "retry_after": 0},
    reply(GOOD),
    {"sleep": 4.0, "content": "too late"},  # the client gives up after 3 s
    reply(BROKEN, "Trying something bolder."),
    {"json": {"id": "x", "object": "chat.completion", "model": "fake-model", "choices": []}},
]


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_env(tmp_path_factory.mktemp("env"))


def heldout_dirs(env_file: Path) -> list[Path]:
    return [(env_file.parent / "stores" / n).resolve() for n in ("heldout3", "heldout4")]


class HeldoutGuard:
    """Make held-out stores fail to open until every round of `run_dir` is complete, and record
    when they were opened."""

    def __init__(self, mp: pytest.MonkeyPatch, env_file: Path, run_dir: Path, rounds: int):
        self.opened: list[str] = []
        real = store_mod.read_store_dir
        held = set(heldout_dirs(env_file))

        def guarded(path: Any) -> Any:
            p = Path(path).resolve()
            if p in held:
                if not (run_dir / "rounds" / f"{rounds:04d}").is_dir():
                    raise AssertionError(f"held-out store {p} opened before the final step")
                self.opened.append(str(p))
            return real(path)

        mp.setattr(store_mod, "read_store_dir", guarded)


@pytest.fixture(scope="module")
def e2e(env_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    run_dir = tmp_path_factory.mktemp("runs") / "e2e"
    progress: list[str] = []
    with pytest.MonkeyPatch.context() as mp, FakeOpenAI(SCRIPT) as server:
        guard = HeldoutGuard(mp, env_file, run_dir, 3)
        summary = run_discovery(config(env_file, run_dir, server.url), progress=progress.append)
        return {"run_dir": run_dir, "summary": summary, "server": server, "guard": guard,
                "progress": progress, "url": server.url}


def test_three_rounds_end_to_end(e2e: dict[str, Any], env_file: Path) -> None:
    run_dir, summary, server = e2e["run_dir"], e2e["summary"], e2e["server"]
    assert summary["status"] == "complete"
    assert summary["rounds_completed"] == 3
    assert server.count == len(SCRIPT)  # 429 and timeout retried once each, nothing repeated
    rounds = [json.loads((run_dir / "rounds" / f"{n:04d}" / "c1" / "verdict.json").read_text())
              for n in (1, 2, 3)]
    assert [v["kind"] for v in rounds] == ["ok", "exception", "no_candidate"]
    assert rounds[1]["stage"] == "smoke" and "IndexError" in rounds[1]["message"]
    assert "answers[self.n]" in (rounds[1]["traceback"] or "")
    r1 = json.loads((run_dir / "rounds" / "0001" / "c1" / "results.json").read_text())
    assert r1["name"] == "probe_vote" and r1["eligible"] and r1["objective"] > 0
    assert len(r1["rows"]) == 2 * 3  # 2 search stores × 3 β
    for n in (1, 2, 3):
        d = run_dir / "rounds" / f"{n:04d}"
        for f in ("prompt.md", "messages.json", "response.json", "cost.json", "c1/verdict.json",
                  "c1/results.json", "c1/digest.json"):
            assert (d / f).is_file(), f"round {n} lacks {f}"
        assert not (d / "c2").exists()  # one candidate per round unless --candidates asks more
    assert (run_dir / "rounds" / "0001" / "c1" / "candidate.py").read_text().startswith('"""Probe')
    assert not (run_dir / "rounds" / "0003" / "c1" / "candidate.py").exists()
    # The digest of the good candidate: stop reasons and the ledger (single-branch actions).
    dg = json.loads((run_dir / "rounds" / "0001" / "c1" / "digest.json").read_text())["stores"]
    st = dg["synth/search1"]
    assert st["traced_episodes"] == st["resolved_episodes"] > 0
    assert {r for r, _ in st["stop_reasons"]} <= {"stable", "all_done", "max_steps"}
    # The history reaches the agent: round 2's prompt shows round 1's candidate and digest,
    # round 3's prompt round 2's typed verdict.
    p2 = (run_dir / "rounds" / "0002" / "prompt.md").read_text()
    p3 = (run_dir / "rounds" / "0003" / "prompt.md").read_text()
    assert "Your best: round 1, probe_vote" in p2 and "stop reasons" in p2
    assert "Best so far: " in p2  # a seed or the candidate, whichever scores higher
    assert "exception at smoke" in p3 and "IndexError" in p3
    # Index, selection, held-out, spend.
    index = read_jsonl(run_dir / "runs.jsonl")
    assert [e["kind"] for e in index] == ["round", "round", "round", "final"]
    sel = json.loads((run_dir / "final" / "selection.json").read_text())
    assert sel["selected"]["round"] == 1 and sel["heldout_objective"] is not None
    held = json.loads((run_dir / "final" / "heldout.json").read_text())
    labels = {r["label"] for r in held["rows"]}
    # The seeds and, by default, the strongest built-ins (never shown to the agent).
    assert labels == {"r1:probe_vote", "sc", "asc", "esc", "parallel_probe", "cmc", "dynaact"}
    assert sel["baselines"] == ["cmc", "dynaact"]
    assert sel["heldout_verdict"]["kind"] == "ok"
    assert set(sel["heldout_objectives"]) == labels
    # ΔAUC of the selected candidate against every one of them, per store and pooled, with a
    # paired interval that says whether it is significant.
    comp = sel["comparisons"]
    assert set(comp) == labels - {"r1:probe_vote"}
    for c in comp.values():
        assert set(c["stores"]) == {"synth/heldout3", "synth/heldout4"}
        iv = c["pooled"]
        assert iv["low"] <= iv["delta"] <= iv["high"]
        assert iv["significant"] == (iv["low"] > 0 or iv["high"] < 0)
    # Six baselines are six claims: the pooled ones carry Holm's adjustment over all of them.
    from autotts.stats import holm

    names = list(comp)
    for n, h in zip(names, holm([comp[n]["pooled"]["p_value"] for n in names]), strict=True):
        iv = comp[n]["pooled"]
        assert iv["p_holm"] == pytest.approx(h, abs=1e-4) and iv["p_holm"] >= iv["p_value"]
        assert iv["significant_holm"] == (iv["significant"] and h < 0.05)
    # The held-out step is watched: one line per controller × store.
    steps = [m for m in e2e["progress"] if m.startswith("held-out [") and not m.endswith("%")]
    assert len(steps) == 7 * 2 and steps[-1].startswith("held-out [14/14]")

    assert {r["store"] for r in held["rows"]} == {"synth/heldout3", "synth/heldout4"}
    reqs = read_jsonl(run_dir / "requests.jsonl")
    assert [r["status"] for r in reqs if r["http"]] == ["429", "ok", "timeout", "ok", "ok"]
    cost = json.loads((run_dir / "rounds" / "0001" / "cost.json").read_text())
    assert cost["cost_usd"] == pytest.approx(
        (cost["prompt_tokens"] * 1.0 + cost["completion_tokens"] * 2.0) / 1e6)
    assert summary["spent_usd"] == pytest.approx(sum(r.get("cost_usd") or 0 for r in reqs))
    assert any("best so far" in m for m in e2e["progress"])
    assert (run_dir / "report" / "report.md").is_file()
    # Nothing left behind by the lock; round and final directories as readable as any other.
    assert not (run_dir / ".lock").exists()
    from autotts.fsio import current_umask

    want = 0o777 & ~current_umask()
    for d in (run_dir / "rounds" / "0001", run_dir / "final"):
        assert stat.S_IMODE(d.stat().st_mode) == want, d


def test_heldout_isolated(e2e: dict[str, Any], env_file: Path) -> None:
    """Held-out stores are opened only in the final step (the guard raises otherwise), and
    neither their paths nor their names appear in any prompt."""
    assert sorted(set(e2e["guard"].opened)) == sorted(str(p) for p in heldout_dirs(env_file))
    run_dir = e2e["run_dir"]
    for prompt in run_dir.glob("rounds/*/prompt.md"):
        text = prompt.read_text()
        assert "heldout3" not in text and "heldout4" not in text and "stores/heldout" not in text
    for body in e2e["server"].requests:
        assert "heldout" not in json.dumps(body)


def test_cached_run_replays_with_zero_http_calls(e2e: dict[str, Any], env_file: Path,
                                                 tmp_path: Path) -> None:
    src = e2e["run_dir"]
    replay = tmp_path / "replay"
    with FakeOpenAI([]) as server:
        cfg = config(env_file, replay, e2e["url"], offline=True, api_key=None,
                     cache_dir=src / "cache")
        summary = run_discovery(cfg)
        assert server.count == 0
    assert summary["status"] == "complete" and summary["this_invocation"]["http_calls"] == 0
    assert_same_rounds(src, replay)


def test_report_reads_the_run_dir(e2e: dict[str, Any], tmp_path: Path) -> None:
    rep = read_run_dir(e2e["run_dir"])
    labels = {r["controller"] for r in rep.rows}
    assert {"r1:probe_vote", "sc", "parallel_probe"} <= labels
    assert [r["round"] for r in rep.tables["Rounds"]] == ["1", "2", "3"]
    assert "Held-out split" in rep.tables
    paths = write_run_report(e2e["run_dir"], tmp_path / "rep")
    md = paths.markdown.read_text()
    assert "## Rounds" in md and "## Held-out split" in md
    # Rounds and candidates are counted apart (round 3 had no candidate), and the Summary's AUC
    # is the objective's: the environment's token range, not each store's curve overlap.
    assert "3 round(s), 2 candidate(s) evaluated" in md
    assert "log-token range 2000–200000 tokens" in md
    summ = json.loads(paths.summary.read_text())
    cand = [r for r in summ["summary"] if r["controller"] == "r1:probe_vote"
            and r["store"].startswith("synth/search")]
    rec = json.loads((e2e["run_dir"] / "rounds" / "0001" / "c1" / "results.json").read_text())
    assert {r["store"]: round(r["auc"], 4) for r in cand} == {
        k: round(v, 4) for k, v in rec["store_objective"].items()}
    assert "ΔAUC" in md and "Winner's curse" in md
    assert paths.png is not None and paths.png.stat().st_size > 0


def test_report_puts_an_interval_on_every_difference(e2e: dict[str, Any], tmp_path: Path) -> None:
    """The run report's standings give every seed's and candidate's difference to the best seed
    its paired interval (as the prompt does), the Summary's AUCs (search and held-out) their
    intervals over questions, and the winner's-curse figure says plainly that it has none."""
    import re

    from autotts.discover.runreport import VERSUS

    rep = read_run_dir(e2e["run_dir"])
    cell = re.compile(r"^[+-]\d+\.\d\d \[[+-]\d+\.\d\d, [+-]\d+\.\d\d\] "
                      r"(better|worse|within noise)$")
    seeds = rep.tables["Seeds (search split)"]
    best = max(seeds, key=lambda s: s["objective"])
    assert best[VERSUS] == "(the best seed)"
    assert all(cell.match(s[VERSUS]) for s in seeds if s is not best)
    scored = [r for r in rep.tables["Rounds"] if r["objective"] is not None]
    assert scored and all(cell.match(r[VERSUS]) for r in scored)
    for r in scored:  # the cell's point is the difference of the two objectives
        assert float(r[VERSUS].split()[0]) == pytest.approx(r["objective"] - best["objective"],
                                                            abs=0.011)
    paths = write_run_report(e2e["run_dir"], tmp_path / "rep")
    summ = json.loads(paths.summary.read_text())["summary"]
    assert {e["store"] for e in summ if e["auc_ci_questions"] is not None} == {
        e["store"] for e in summ}  # every store, search and held-out
    for e in summ:
        if e["auc_ci_questions"] is not None:
            lo, hi = e["auc_ci_questions"]
            assert lo <= e["auc"] + 1e-6 and e["auc"] - 1e-6 <= hi
    md = paths.markdown.read_text()
    assert "AUC 95% CI (questions)" in md and VERSUS in md
    curse = next(n for n in rep.notes if n.startswith("Winner's curse"))
    assert "one figure with no interval" in curse


def test_resume_refuses_another_config(e2e: dict[str, Any], env_file: Path) -> None:
    with pytest.raises(ConfigError, match="different run"):
        run_discovery(config(env_file, e2e["run_dir"], "http://127.0.0.1:9/v1",
                             model="other-model"))
    with pytest.raises(ConfigError, match="finalized"):
        run_discovery(config(env_file, e2e["run_dir"], e2e["url"], rounds=5))


def test_dry_run_prints_first_prompt(env_file: Path, tmp_path: Path) -> None:
    with pytest.MonkeyPatch.context() as mp, FakeOpenAI([]) as server:
        HeldoutGuard(mp, env_file, tmp_path / "dry", 10**6)
        text = first_prompt(config(env_file, tmp_path / "dry", server.url))
        assert server.count == 0
    assert "# Environment: tiny" in text and "synth/search1" in text
    assert "No proposals of yours yet" in text and "```python" in text
    assert "heldout" not in text
    assert not (tmp_path / "dry" / "config.json").exists()


def cli_dry_run(env_file: Path, run_dir: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "autotts", "discover", "--env", str(env_file), "--run-dir",
         str(run_dir), "--dry-run", *flags],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, **cli_env("")},
        timeout=120,
    )


def test_cli_dry_run(env_file: Path, tmp_path: Path) -> None:
    proc = cli_dry_run(env_file, tmp_path / "d")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("<!-- role: system -->")
    assert "This is round 1. Propose a new controller" in proc.stdout
    proc = cli_dry_run(env_file, tmp_path / "d", "--candidates", "3")
    assert proc.returncode == 0, proc.stderr
    assert "Propose up to 3 new controllers" in proc.stdout
    assert "from 1 to 3 complete controller files" in proc.stdout
    proc = cli_dry_run(env_file, tmp_path / "d", "--ray-address", "127.0.0.1:6379")
    assert proc.returncode == 2 and "--ray-address needs --executor ray" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---- crash safety ---------------------------------------------------------------------------


def run_cli(env_file: Path, run_dir: Path, url: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "autotts", "discover", "--env", str(env_file), "--run-dir",
         str(run_dir), "--model", "fake-model", "--base-url", url, "--rounds", "3"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, **cli_env(url, **extra)},
        timeout=300,
    )


@pytest.mark.parametrize("point", ["response", "committed"])
def test_sigkill_mid_round_then_rerun(point: str, e2e: dict[str, Any], env_file: Path,
                                      tmp_path: Path) -> None:
    """SIGKILL in round 2 (after the model answered and before the round was recorded; or after
    the round's directory was renamed into place and before its index line), then the same
    command again: the run dir ends up with exactly the rounds of the uninterrupted run, and the
    model is never asked twice for the same round."""
    run_dir = tmp_path / "killed"
    with FakeOpenAI(SCRIPT) as server:
        proc = run_cli(env_file, run_dir, server.url, AUTOTTS_DISCOVER_FAULT=f"kill:2:{point}")
        assert proc.returncode == -9, proc.stderr
        assert sorted(p.name for p in (run_dir / "rounds").iterdir()
                      if not p.name.startswith(".")) == (
            ["0001"] if point == "response" else ["0001", "0002"])
        proc = run_cli(env_file, run_dir, server.url)
        assert proc.returncode == 0, proc.stderr
        assert server.count == len(SCRIPT)
    assert not any(p.name.startswith(".") for p in (run_dir / "rounds").iterdir())
    assert_same_rounds(e2e["run_dir"], run_dir)


# ---- the spend cap ----------------------------------------------------------------------------


def test_spend_cap_stops_before_a_request(env_file: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "cap"
    with FakeOpenAI([reply(GOOD), reply(FORBIDDEN)]) as server:
        cfg = config(env_file, run_dir, server.url, prices={"fake-model": {"input": 100.0,
                                                                           "output": 0.0}})
        from autotts.discover.loop import Discovery

        d = Discovery(cfg)
        chars = sum(len(m["content"]) for m in d.messages(d.seeds()))
        est = (chars // 3 + 16) * 100.0 / 1e6
        cfg.budget_usd = 1.2 * est  # room for round 1, not for round 2
        summary = run_discovery(cfg)
        assert server.count == 1
    assert summary["status"] == "budget_exhausted" and summary["rounds_completed"] == 1
    assert summary["spent_usd"] <= cfg.budget_usd
    assert "--rounds 1" in summary["message"]
    assert not (run_dir / "final").exists()  # held-out untouched: the run can still go on
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "budget_exhausted"


def test_spend_cap_stops_after_a_request_that_crossed_it(env_file: Path, tmp_path: Path) -> None:
    """A server that ignores max_tokens can make one response cost more than estimated: the run
    finishes that round and stops."""
    run_dir = tmp_path / "cap2"
    long_reply = reply(GOOD, "x" * 40_000)
    with FakeOpenAI([long_reply, reply(GOOD)]) as server:
        cfg = config(env_file, run_dir, server.url, max_tokens=10, budget_usd=0.5,
                     prices={"fake-model": {"input": 0.0, "output": 100.0}})
        summary = run_discovery(cfg)
        assert server.count == 1
    assert summary["status"] == "budget_exhausted" and summary["rounds_completed"] == 1
    assert summary["spent_usd"] >= 0.5


def test_unknown_price_with_cap_is_refused(env_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="AUTOTTS_PRICES"):
        run_discovery(config(env_file, tmp_path / "p", "http://127.0.0.1:9/v1",
                             model="mystery-model", budget_usd=1.0))


def test_rerun_of_complete_run_is_a_no_op(e2e: dict[str, Any], env_file: Path,
                                          tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(e2e["run_dir"], copy)
    with FakeOpenAI([]) as server:
        summary = run_discovery(config(env_file, copy, e2e["url"]))
        assert server.count == 0
    assert summary["status"] == "complete"
    assert_same_rounds(e2e["run_dir"], copy)


def test_critic_and_no_eligible_candidate(env_file: Path, tmp_path: Path) -> None:
    """With a critic, a rejected proposal is not evaluated (its review goes back to the agent);
    a forbidden import is stopped at admission; with nothing eligible, the held-out step reports
    the baselines and selects nothing."""
    run_dir = tmp_path / "critic"
    script = [reply(GOOD), {"content": "VERDICT: REJECT\n- prunes the leader's branches"},
              reply(FORBIDDEN), {"content": "VERDICT: APPROVE\n- looks fine"}]
    with FakeOpenAI(script) as server:
        summary = run_discovery(config(env_file, run_dir, server.url, rounds=2,
                                       critic="fake-model"))
        assert server.count == 4
    v1 = json.loads((run_dir / "rounds" / "0001" / "c1" / "verdict.json").read_text())
    v2 = json.loads((run_dir / "rounds" / "0002" / "c1" / "verdict.json").read_text())
    assert (v1["kind"], v1["stage"]) == ("critic_rejected", "critic")
    assert (v2["kind"], v2["stage"]) == ("forbidden", "admit") and "os" in v2["message"]
    assert json.loads((run_dir / "rounds" / "0002" / "c1" / "critic.json").read_text())["approved"]
    assert "prunes the leader's branches" in (run_dir / "rounds" / "0002" / "prompt.md").read_text()
    cost = json.loads((run_dir / "rounds" / "0001" / "cost.json").read_text())
    assert [c["purpose"] for c in cost["requests"]] == ["propose", "critic"]
    assert summary["status"] == "complete" and summary["best"] is None
    sel = json.loads((run_dir / "final" / "selection.json").read_text())
    assert sel["selected"] is None
    held = json.loads((run_dir / "final" / "heldout.json").read_text())
    assert {r["label"] for r in held["rows"]} == {"sc", "asc", "esc", "parallel_probe", "cmc",
                                                  "dynaact"}


def test_report_with_runs_and_eval_json(e2e: dict[str, Any], tmp_path: Path) -> None:
    """`autotts report` over a run dir and a plain eval --json file (the report_cmd hook)."""
    from autotts.discover.runreport import report_with_runs

    assert report_with_runs([tmp_path], tmp_path / "none") is None
    extra = tmp_path / "eval.json"
    extra.write_text(json.dumps([{"store": "synth/search1", "controller": "mine", "beta": 0.0,
                                  "accuracy": 50.0, "tokens": 5000.0}]))
    paths = report_with_runs([e2e["run_dir"], extra], tmp_path / "rep")
    summary = json.loads(paths.summary.read_text())
    assert {"mine", "r1:probe_vote", "sc"} <= {r["controller"] for r in summary["rows"]}
    assert "Rounds" in summary["extra_tables"]


# ---- several candidates per round ---------------------------------------------------------


def test_several_candidates_per_round(e2e: dict[str, Any], env_file: Path,
                                      tmp_path: Path) -> None:
    """--candidates 3: the files of one response are evaluated side by side, each recorded in
    its own slot with the numbers it would get alone; a response with too many files is a
    parse verdict; selection breaks ties by proposal order."""
    run_dir = tmp_path / "several"
    script = [several(GOOD, BROKEN, GOOD_B), several(GOOD, GOOD, GOOD, GOOD)]
    with FakeOpenAI(script) as server:
        summary = run_discovery(config(env_file, run_dir, server.url, rounds=2, candidates=3,
                                       workers=2))
        assert server.count == 2
    r1 = run_dir / "rounds" / "0001"
    assert sorted(p.name for p in r1.iterdir() if p.is_dir()) == ["c1", "c2", "c3"]
    kinds = [json.loads((r1 / f"c{j}" / "verdict.json").read_text())["kind"] for j in (1, 2, 3)]
    assert kinds == ["ok", "exception", "ok"]
    res = [json.loads((r1 / f"c{j}" / "results.json").read_text()) for j in (1, 2, 3)]
    alone = json.loads((e2e["run_dir"] / "rounds" / "0001" / "c1" / "results.json").read_text())
    assert res[0]["rows"] == alone["rows"] and res[0]["objective"] == alone["objective"]
    assert [r["controller"] for r in res[2]["rows"]] == ["probe_vote_b"] * len(res[2]["rows"])
    assert [r["accuracy"] for r in res[2]["rows"]] == [r["accuracy"] for r in res[0]["rows"]]
    v2 = json.loads((run_dir / "rounds" / "0002" / "c1" / "verdict.json").read_text())
    assert v2["kind"] == "multiple_candidates" and "1 to 3" in v2["message"]
    index = [(e["kind"], e.get("id")) for e in read_jsonl(run_dir / "runs.jsonl")]
    assert index == [("round", "1"), ("round", "1.2"), ("round", "1.3"), ("round", "2"),
                     ("final", None)]
    prompt2 = (run_dir / "rounds" / "0002" / "prompt.md").read_text()
    assert "from 1 to 3 complete controller files" in prompt2
    assert "| 1.2 | broken |  | exception (smoke) |" in prompt2
    assert "round 1.3, probe_vote_b" in prompt2  # every file of the last round in full
    sel = json.loads((run_dir / "final" / "selection.json").read_text())
    assert (sel["selected"]["id"], sel["selected"]["label"]) == ("1", "r1:probe_vote")
    assert summary["rounds_completed"] == 2 and summary["candidates_evaluated"] == 3
    labels = {r["controller"] for r in read_run_dir(run_dir).rows}
    assert {"r1:probe_vote", "r1.3:probe_vote_b"} <= labels and "r1.2:broken" not in labels


def test_an_environment_whose_search_stores_differ_in_delta_is_refused(tmp_path: Path) -> None:
    """The prompt tells the agent one Δ: a search store with another Δ (or one that departs
    from the file's [replay] delta) is a ConfigError naming the store, before any request."""
    from autotts.discover.loop import Discovery
    from autotts.store import write_store
    from autotts.synth import SynthParams, generate

    env = make_env(tmp_path)
    shutil.rmtree(tmp_path / "stores" / "search2")
    write_store(generate(SynthParams(questions=5, branches=16, seed=9, model="synth",
                                     benchmark="search2", delta=400)),
                tmp_path / "stores" / "search2")
    with pytest.raises(ConfigError, match=r"search store .*search2 has Δ = 400 .* share one Δ"):
        Discovery(config(env, tmp_path / "run", None))
    env.write_text(env.read_text().replace("[replay]\n", "[replay]\ndelta = 400\n"))
    with pytest.raises(ConfigError, match=r"search store .*search1 has Δ = 500 .*\[replay\] delta"):
        Discovery(config(env, tmp_path / "run2", None))


def test_run_freezes_startup_objects_for_its_rounds(env_file: Path, tmp_path: Path) -> None:
    """The stores, search data and seeds' figures are frozen out of the collector while the
    rounds run (a full collection in a round walked them all again), and thawed at the end."""
    import gc

    if gc.get_freeze_count():
        pytest.skip("objects already frozen in this process: run() leaves them as they are")
    seen: list[tuple[str, int]] = []
    with FakeOpenAI([reply(GOOD)]) as server:
        summary = run_discovery(config(env_file, tmp_path / "run", server.url, rounds=1),
                                progress=lambda m: seen.append((m, gc.get_freeze_count())))
    assert summary["rounds_completed"] == 1
    asking = [n for m, n in seen if ": asking" in m]
    assert asking and all(n > 0 for n in asking)
    assert gc.get_freeze_count() == 0
