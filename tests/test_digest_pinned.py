"""The digest pinned, byte for byte, to what it was before its replays were made faster and split
over two processes (session 13): `make_digest`'s output (its exact Python values, the JSON that
digest.json holds and the prompt text `render_digest` makes of it), or the exception it raises,
for a varied set of inputs. The golden hashes were written by the digest of main 4d7c3dc:

    PYTHONPATH=/path/to/that/tree python tests/test_digest_pinned.py --write

Inputs: real sweeps with traces (several controllers, two synthetic stores, κ = 0 and 7, a token
budget, the subsample protocol with a pool), episodes and traces left out, traces that do not
replay (a cost that departs, index lists out of order, with floats, bools, duplicates or negative
numbers, fields missing, unknown actions), random actions of every kind, repeated traces (the
digest replays equal actions once), traces of unknown stores or without β, verdicts taken from
answer ids, and malformed rows that raise. Each case runs in one process and split over two
(`make_digest(..., processes=...)`), a few over three."""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autotts.discover.digest import SearchData, attach_answers, make_digest, render_digest
from autotts.engine import Episode, InvalidAction
from autotts.evaluate import EvalProtocol, evaluate
from autotts.synth import SynthParams, generate

GOLDEN = Path(__file__).parent / "golden" / "digest_pinned.json"
BETAS = [0.0, 0.3, 0.6, 1.0]
PROTOS = {
    "k0": EvalProtocol(draws=3),
    "k7b": EvalProtocol(draws=3, probe_cost=7, budget=40000),
    "sub": EvalProtocol(draws=3, protocol="subsample", pool=10, seed=3),
}
CONTROLLERS = ("sc", "asc", "answer_convergence", "parallel_probe", "st_bon", "cmc")


def _stores() -> list[Any]:
    return [generate(SynthParams(questions=8, branches=20, seed=11, model="pin-a", benchmark="s")),
            generate(SynthParams(questions=6, branches=14, seed=12, model="pin-b", benchmark="s"))]


def _sweep(stores: list[Any], proto: EvalProtocol, controller: str) -> tuple[Any, Any, Any]:
    ev = evaluate(controller, stores, BETAS, proto, episodes=True, traces=True, on_error="record")
    traces = ev.traces or []
    attach_answers(traces, ev.episodes or [])
    return ev.rows, ev.episodes, traces


def _mutate(traces: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Copies of the traces, about half of them altered in one of many ways."""
    rng = np.random.default_rng(seed)
    out = []
    for t in traces:
        t = copy.deepcopy(t)
        acts = [e for e in t["events"] if "tokens" in e]
        kind = int(rng.integers(0, 22))
        many = [e for e in acts if isinstance(e.get("idx"), list) and len(e["idx"]) > 1]
        if kind == 0 and acts:
            acts[int(rng.integers(len(acts)))]["tokens"] += 1
        elif kind == 1 and many:
            many[0]["idx"] = many[0]["idx"][::-1]
        elif kind == 2 and many:
            many[0]["idx"] = [float(x) for x in many[0]["idx"]]
        elif kind == 3 and many:
            many[0]["idx"] = [many[0]["idx"][0]] + many[0]["idx"]
        elif kind == 4 and many:
            many[0]["idx"] = [-1, *many[0]["idx"][1:]]
        elif kind == 5 and many:
            many[0]["idx"] = [bool(x) for x in many[0]["idx"]]
        elif kind == 6 and many:
            del many[0]["idx"]
        elif kind == 7 and many:
            del many[0]["idx"]
            many[0].pop("n", None)
        elif kind == 8 and acts:
            del acts[-1]["tokens"]
        elif kind == 9:
            t["events"] = [e for e in t["events"] if e.get("ev") != "stop"]
        elif kind == 10:
            t["events"].append({"ev": "stop", "reason": "x" * 90 + str(int(rng.integers(3)))})
        elif kind == 11:
            t.pop("correct", None)
        elif kind == 12:
            t.pop("correct", None)
            t["answer"] = np.int64(t.get("answer", -1))
        elif kind == 13:
            t["beta"] = None
        elif kind == 14 and acts:
            acts[0]["ev"] = "branch_sideways"
        elif kind == 15 and many:
            many[0]["n"] = len(many[0]["idx"]) + 1
        elif kind == 16 and acts:
            acts[-1]["i"] = "0"
        elif kind == 17 and many:
            many[0]["idx"] = tuple(many[0]["idx"])
        elif kind == 18 and many:
            many[0]["times"] = 2
        elif kind == 19:
            t["events"].insert(0, {"ev": "note", "tokens": 3, "i": 5})
        out.append(t)
    return out


def _random_traces(search: SearchData, proto: EvalProtocol, seed: int, n: int
                   ) -> list[dict[str, Any]]:
    """Traces of random actions of every kind (refused ones are not logged), as the engine logs
    them, on the search stores' questions and draw orders."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = int(rng.integers(len(search.names)))
        q = int(rng.integers(search.data[s].num_questions))
        draw = int(rng.integers(proto.draws))
        ep = Episode(search.question(s, q), search.order(s, draw, q), probe_cost=proto.probe_cost,
                     budget=proto.budget, trace=True)
        for _ in range(int(rng.integers(1, 30))):
            act = str(rng.choice(["branch", "branch_many", "extend", "probe", "advance",
                                  "advance_many", "read", "read_new", "read_new_many", "prune",
                                  "prune_many"]))
            i = int(rng.integers(max(ep.num_opened, 1)))
            try:
                if act in ("branch", "branch_many"):
                    flag = bool(rng.random() < 0.6)
                    if act == "branch":
                        ep.branch(probe=flag)
                    else:
                        ep.branch_many(int(rng.integers(0, 4)), probe=flag)
                elif act == "read_new":
                    ep.read_new()
                elif act == "read_new_many":
                    ep.read_new_many(int(rng.integers(0, 3)))
                elif act == "advance_many":
                    r = ep.running
                    if rng.random() < 0.5:
                        ep.advance_many(r, int(rng.integers(1, 3)))
                    else:
                        ep.advance_many(list(np.flatnonzero(r)[::-1].tolist()))
                elif act == "prune_many":
                    ep.prune_many(np.flatnonzero(~ep.pruned)[: int(rng.integers(0, 3))])
                else:
                    getattr(ep, act)(i)
            except InvalidAction:
                pass
            if rng.random() < 0.1:
                ep.trace("stop", reason=f"r{int(rng.integers(4))}")
        out.append({"store": search.names[s], "beta": float(rng.choice(BETAS)), "draw": draw,
                    "question": q, "events": ep.trace_events(),
                    "correct": bool(rng.random() < 0.5)})
    return out


def _cases() -> dict[str, tuple[str, Any]]:
    """name -> (protocol key, (rows, episodes, traces)), built deterministically."""
    stores = _stores()
    cases: dict[str, tuple[str, Any]] = {}
    for pk, proto in PROTOS.items():
        search = SearchData(stores, proto)
        allrows: list[Any] = []
        alleps: list[Any] = []
        alltr: list[Any] = []
        for c in CONTROLLERS:
            rows, eps, trs = _sweep(stores, proto, c)
            cases[f"{pk}/{c}"] = (pk, (rows, eps, trs))
            allrows += rows
            alleps += eps
            alltr += trs
        cases[f"{pk}/all"] = (pk, (allrows, alleps, alltr))
        cases[f"{pk}/all-repeated"] = (pk, (allrows, alleps, alltr + copy.deepcopy(alltr[::3])))
        cases[f"{pk}/no-traces"] = (pk, (allrows, alleps, None))
        cases[f"{pk}/no-episodes"] = (pk, (allrows, None, alltr))
        cases[f"{pk}/nothing"] = (pk, ([], None, []))
        for m in range(3):
            cases[f"{pk}/mutated{m}"] = (pk, (allrows, alleps, _mutate(alltr, 100 * m + 1)))
        rand = _random_traces(search, proto, 7, 300)
        cases[f"{pk}/random"] = (pk, (allrows[:5], alleps[:40], rand))
        cases[f"{pk}/random-mutated"] = (pk, ([], None, _mutate(rand, 5)))
        odd = copy.deepcopy(alltr[:40])
        odd[3]["store"] = "not/a-store"
        odd[5]["events"] = None
        cases[f"{pk}/odd"] = (pk, ([], [dict(e, store="not/a-store") for e in alleps[:9]], odd))
        bad = copy.deepcopy(alltr[:30])
        del bad[17]["question"]
        cases[f"{pk}/raises-question"] = (pk, ([], None, bad))
        # Wrong rows out of range, which the plain loop reads (Python's negative indices).
        odd_eps = copy.deepcopy(alleps[:60])
        for e, (field, value) in zip(odd_eps[::7], [
                ("question", -1), ("opened", -2), ("opened", 10**6), ("question", -3),
                ("opened", -1), ("draw", 10**4), ("answer", -7), ("answer", 10**30)], strict=False):
            e["correct"] = False
            e[field] = value
        cases[f"{pk}/odd-episodes"] = (pk, ([], odd_eps, None))
        neg = copy.deepcopy(alleps[:20])
        neg[5]["correct"] = False
        neg[5]["draw"] = -1
        cases[f"{pk}/negative-draw"] = (pk, ([], neg, None))
        big = copy.deepcopy(alleps[:20])
        big[3]["correct"] = False
        big[3]["question"] = 10**6
        cases[f"{pk}/raises-question-range"] = (pk, ([], big, None))
        bad_ep = copy.deepcopy(alleps[:30])
        bad_ep[4]["draw"] = "x"
        bad_ep[4]["correct"] = False
        cases[f"{pk}/raises-episode"] = (pk, ([], bad_ep, alltr[:30]))
    return cases


def _outcome(search: SearchData, args: Any, processes: int | None) -> dict[str, str]:
    try:
        d = make_digest(search, *args, processes=processes)
    except Exception as e:  # the same error, raised the same way, is part of the contract
        return {"raises": f"{type(e).__name__}: {e}"}
    h = hashlib.sha256
    return {"repr": h(repr(d).encode()).hexdigest(),
            "json": h(json.dumps(d, sort_keys=True, indent=1).encode()).hexdigest(),
            "text": h(render_digest(d, search.names).encode()).hexdigest()}


@pytest.fixture(scope="module")
def cases() -> dict[str, tuple[str, Any]]:
    return _cases()


@pytest.mark.parametrize("processes", [1, 2])
def test_digest_is_pinned(cases: dict[str, tuple[str, Any]], processes: int) -> None:
    golden = json.loads(GOLDEN.read_text())
    assert sorted(golden) == sorted(cases)
    stores = _stores()
    searches = {pk: SearchData(stores, p) for pk, p in PROTOS.items()}
    for name, (pk, args) in cases.items():
        # One process: one SearchData per protocol across the cases, as the loop keeps one (its
        # caches fill); split: a fresh one each time, as in a run's first digest, the forks
        # filling their caches only for themselves.
        search = searches[pk] if processes == 1 else SearchData(stores, PROTOS[pk])
        assert _outcome(search, args, processes) == golden[name], name


def test_digest_is_pinned_three_processes(cases: dict[str, tuple[str, Any]]) -> None:
    golden = json.loads(GOLDEN.read_text())
    stores = _stores()
    for name in ("k0/all-repeated", "k7b/mutated1", "sub/random", "k7b/raises-question"):
        pk, args = cases[name]
        assert _outcome(SearchData(stores, PROTOS[pk]), args, 3) == golden[name], name


def test_pinned_cases_are_varied() -> None:
    """The golden cases include replayed traces, traces that do not replay and errors."""
    golden = json.loads(GOLDEN.read_text())
    assert sum("raises" in v for v in golden.values()) >= 3 * len(PROTOS)
    assert len({v.get("repr") for v in golden.values()}) > 30


def _write() -> None:
    cases = _cases()
    stores = _stores()
    out = {}
    for name, (pk, args) in cases.items():
        search = SearchData(stores, PROTOS[pk])
        try:
            d = make_digest(search, *args)
        except Exception as e:
            out[name] = {"raises": f"{type(e).__name__}: {e}"}
            continue
        h = hashlib.sha256
        out[name] = {"repr": h(repr(d).encode()).hexdigest(),
                     "json": h(json.dumps(d, sort_keys=True, indent=1).encode()).hexdigest(),
                     "text": h(render_digest(d, search.names).encode()).hexdigest()}
        print(name, d["stores"][search.names[0]].get("resolved_episodes"),
              d["stores"][search.names[0]].get("traced_episodes"), file=sys.stderr)
    GOLDEN.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    _write()
