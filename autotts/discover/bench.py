"""The non-LLM time of a discovery run: `python -m autotts.discover.bench`.

Runs a scripted 5-round discovery on env/aime-qwen3.toml (4 search stores × 11 β × 20 draws)
against the fake OpenAI server in this process, with realistic proposals: a probe-based controller,
a syntax error, an invalid action, a non-monotone schedule and an improved adaptive-consistency
variant. Everything the loop does besides waiting for the model is timed: the seeds' sweeps, the
sandbox (admission, smoke, sweep, traces), digests, prompts, the held-out step and the report.
non-LLM time = wall time − time spent in (or backing off from) chat requests.

    python -m autotts.discover.bench [--env FILE] [--rounds 5] [--workers 2] [--mode both]
                                     [--executor local|ray] [--race-draws K] [--json FILE]

The seeds' and baselines' curves are cached across runs (autotts.discover.baselines): "cold" is a
first run on a machine, "warm" every later run on the same environment. `--mode side-by-side`
times the same proposals (--rounds of them) once one per round and once all in one round
(--candidates), both warm, in the same invocation. `--mode race` times proposals that score
below the best seed (and one that reaches it) warm, once with racing over draws and once
without, in the same invocation, and prints each race's decision: `--mode race --rounds 1` is
one round of a Parallel-Probe-class candidate (probe_consensus), raced and in full.
`--race-draws K` applies to every mode (0: every candidate in full).

Per round it prints the wall and CPU time (all processes) from asking the model to the next
round's request, and the loop's phases in it (prompt, admit, smoke, sweep, traces, digest);
then the phases that run once per run (seeds, held-out step, report).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from autotts.discover.config import DiscoverConfig, load_prices
from autotts.discover.fakeserver import FakeOpenAI
from autotts.discover.loop import Discovery
from autotts.paths import envs_dir

PROBE_CONSENSUS = '''\
"""Grow a few branches in lockstep, probing each interval; answer once the probe majority has
held for `patience` steps."""

import numpy as np


def leader(latest):
    vals = latest[latest >= 0]
    if len(vals) == 0:
        return -1
    counts = np.bincount(vals)
    return int(vals[np.argmax(counts[vals] == counts.max())])


class ProbeConsensus:
    NAME = "probe_consensus"

    @staticmethod
    def schedule(beta):
        b = min(max(beta, 0.0), 1.0)
        return {"width": int(round(4 + 20 * b)), "patience": int(round(3 + 7 * b)),
                "max_steps": int(round(10 + 30 * b))}

    def __init__(self, width=12, patience=6, max_steps=25):
        self.width = int(width)
        self.patience = int(patience)
        self.max_steps = int(max_steps)

    def run(self, ep):
        ep.branch_many(min(self.width, ep.pool_size), probe=True)
        current, stable = -1, 0
        for step in range(self.max_steps):
            running = ep.running
            if not running.any():
                ep.trace("stop", reason="all_done", step=step)
                return leader(ep.latest)
            ep.advance_many(running)
            lead = leader(ep.latest)
            stable = stable + 1 if lead == current else 1
            current = lead
            if stable >= self.patience:
                ep.trace("stop", reason="stable", step=step)
                return current
        ep.trace("stop", reason="max_steps")
        return current
'''

SYNTAX_ERROR = '''\
class Truncated:
    NAME = "truncated"

    @staticmethod
    def schedule(beta):
        return {"n": 1 + int(63 * beta)

    def run(self, ep):
        return ep.read_new()
'''

INVALID_ACTION = '''\
class Greedy:
    NAME = "greedy"

    @staticmethod
    def schedule(beta):
        return {"extra": int(round(8 * beta))}

    def __init__(self, extra=4):
        self.extra = int(extra)

    def run(self, ep):
        answers = ep.read_new_many(ep.pool_size).tolist()
        answers += ep.read_new_many(self.extra).tolist()  # past the pool: invalid
        ep.trace("stop", reason="read_all")
        return max(set(answers), key=answers.count)
'''

NON_MONOTONE = '''\
class HumpSC:
    NAME = "hump_sc"

    @staticmethod
    def schedule(beta):
        b = min(max(beta, 0.0), 1.0)
        n = 1 + 62 * b if b <= 0.5 else 32 - 40 * (b - 0.5)
        return {"n": int(round(n))}

    def __init__(self, n=16):
        self.n = int(n)

    def run(self, ep):
        answers = [a for a in ep.read_new_many(min(self.n, ep.pool_size)).tolist() if a >= 0]
        ep.trace("stop", reason="read_n")
        if not answers:
            return -1
        return max(answers, key=answers.count)
'''

ADAPTIVE_BATCHES = '''\
"""Adaptive consistency in small batches: read `batch` whole branches at a time and stop once a
Beta posterior is confident that the leader is the majority."""

from scipy.special import betainc


class AdaptiveBatches:
    NAME = "adaptive_batches"

    @staticmethod
    def schedule(beta):
        b = min(max(beta, 0.0), 1.0)
        return {"max_samples": int(round(3 + 61 * b)), "threshold": 0.85 + 0.14 * b,
                "batch": 2}

    def __init__(self, max_samples=32, threshold=0.95, batch=2):
        self.max_samples = int(max_samples)
        self.threshold = float(threshold)
        self.batch = int(batch)

    def run(self, ep):
        counts = {}
        limit = min(self.max_samples, ep.pool_size)
        read = 0
        while read < limit:
            k = min(self.batch, limit - read)
            for a in ep.read_new_many(k).tolist():
                if a >= 0:
                    counts[a] = counts.get(a, 0) + 1
            read += k
            if counts and read >= 2:
                top = sorted(counts.values(), reverse=True) + [0]
                if 1.0 - betainc(top[0] + 1, top[1] + 1, 0.5) > self.threshold:
                    ep.trace("stop", reason="confident", n=read)
                    return max(counts, key=counts.get)
        ep.trace("stop", reason="max_samples", n=read)
        return max(counts, key=counts.get) if counts else -1
'''

PROPOSALS = [PROBE_CONSENSUS, SYNTAX_ERROR, INVALID_ACTION, NON_MONOTONE, ADAPTIVE_BATCHES]
# `--mode race`: what most rounds of a real run look like, proposals that score below the best
# seed (probe_consensus, a Parallel-Probe-class candidate, and adaptive_batches), then one that
# reaches it (a copy of the best seed's rule, which racing must sweep in full).


def _best_seed_copy() -> str:
    """The seed asc's per-episode rule under another NAME: on env/aime-qwen3.toml it scores the
    best seed's objective exactly, so the race must let it through."""
    from autotts import controller as ctl

    src = ctl.per_episode_source(Path(ctl.load("asc").path).read_text())
    return src.replace('NAME = "asc"', 'NAME = "asc_again"', 1)


RACE_PROPOSALS = [PROBE_CONSENSUS, ADAPTIVE_BATCHES]


def script(rounds: int, candidates: int = 1, proposals: list[str] | None = None
           ) -> list[dict[str, Any]]:
    proposals = proposals or PROPOSALS
    out = []
    for r in range(rounds):
        files = [proposals[(r * candidates + j) % len(proposals)] for j in range(candidates)]
        out.append({"content": f"Round {r + 1}.\n\n"
                    + "\n".join(f"```python\n{f}```\n" for f in files)})
    return out


def scripted_run(env: str, rounds: int, workers: int, run_dir: Path, candidates: int = 1,
                 executor: str = "local", baselines: tuple[str, ...] | None = None,
                 heldout_draws: int | None = None, proposals: list[str] | None = None,
                 race_draws: int | None = None) -> dict[str, Any]:
    """One scripted run into `run_dir`; its timing figures."""
    t_start = time.monotonic()
    asked: list[float] = []  # when each round asked the model: per-round wall times
    cpu_at: list[float] = []  # and the CPU time used by then (this process and its children)
    marks: dict[str, float] = {}
    phases_at: list[dict[str, float]] = []  # the loop's phase timers then: per-round phases
    disc: list[Discovery] = []

    def phases_now() -> dict[str, float]:
        return dict(disc[0].timer.phases) if disc else {}

    def cpu_now() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        c = resource.getrusage(resource.RUSAGE_CHILDREN)  # sandbox processes, once reaped
        return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime

    def progress(msg: str) -> None:
        now = time.monotonic() - t_start
        if re.match(r"round \d+/\d+: asking", msg):
            asked.append(now)
            cpu_at.append(cpu_now())
            phases_at.append(phases_now())
        elif msg.startswith("selected:"):
            marks["final"] = now
            marks["final_cpu"] = cpu_now()
            phases_at.append(phases_now())
        print(f"{now:7.1f}s {msg}", file=sys.stderr, flush=True)

    with FakeOpenAI(script(rounds, candidates, proposals), model="scripted") as server:
        cfg = DiscoverConfig(env=env, run_dir=run_dir, model="scripted", base_url=server.url,
                             api_key="scripted", rounds=rounds, workers=workers,
                             candidates=candidates, executor=executor,
                             heldout_draws=heldout_draws,
                             **({} if baselines is None else {"baselines": baselines}),
                             **({} if race_draws is None else {"race_draws": race_draws}),
                             prices=load_prices('{"scripted": {"input": 0, "output": 0}}'))
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        disc.append(Discovery(cfg, progress=progress))
        summary = disc[0].run()
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    inv = summary["this_invocation"]
    raced = []
    for d in sorted((run_dir / "rounds").glob("[0-9][0-9][0-9][0-9]/c*")):
        res = json.loads((d / "results.json").read_text()) if (d / "results.json").is_file() \
            else {}
        if res.get("race"):
            raced.append({"candidate": f"{d.parent.name}/{d.name} {res.get('name')}",
                          **{k: res["race"][k] for k in ("stop", "draws", "total", "objective",
                                                         "bound", "best")}})
    # Per round: the characters sent (system + user message) and the wall time from asking the
    # model to the next round's request (the fake server answers in milliseconds, so this is the
    # round's non-LLM time to within the request's own few ms).
    prompt_chars = []
    for d in sorted((run_dir / "rounds").glob("[0-9][0-9][0-9][0-9]")):
        msgs = json.loads((d / "messages.json").read_text())
        prompt_chars.append(sum(len(m["content"]) for m in msgs))
    ends = [*asked[1:], marks.get("final", time.monotonic() - t_start)]
    per_round = [round(b - a, 2) for a, b in zip(asked, ends, strict=False)]
    cpu_ends = [*cpu_at[1:], marks.get("final_cpu", cpu_now())]
    cpu_round = [round(b - a, 2) for a, b in zip(cpu_at, cpu_ends, strict=False)]
    if len(phases_at) == len(asked):  # no "selected:" mark (the run stopped early)
        phases_at.append(phases_now())
    # Per round: each phase's wall time from asking the model to the next round's request (the
    # prompt of round n+1 is built before it asks, so it counts in round n, as in round_wall_s).
    round_phases = [{k: round(b.get(k, 0.0) - a.get(k, 0.0), 3) for k in b
                     if b.get(k, 0.0) - a.get(k, 0.0) > 0.0005}
                    for a, b in itertools.pairwise(phases_at)]
    cpu = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
           + c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime)
    return {
        "rounds": summary["rounds_completed"],
        "candidates": summary["candidates_evaluated"],
        "verdicts": summary["verdicts"],
        "wall_s": round(wall, 2),
        "llm_s": inv["llm_s"],
        "non_llm_s": round(wall - inv["llm_s"], 2),
        "cpu_s": round(cpu, 2),
        "phases_s": inv["phases_s"],
        "http_calls": inv["http_calls"],
        "prompt_chars_per_round": prompt_chars,
        "round_wall_s": per_round,
        "round_cpu_s": cpu_round,
        "round_phases_s": round_phases,
        "selected": ((summary.get("selection") or {}).get("selected") or {}).get("label"),
        "race": raced,
    }


RUN_PHASES = ("seeds", "heldout", "report")  # the loop's phases that run once per run


def _phases(ph: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in ph.items()) or "-"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m autotts.discover.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default=str(envs_dir() / "aime-qwen3.toml"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--mode", choices=("cold", "warm", "both", "side-by-side", "race"),
                    default="both",
                    help="cold: an empty baseline cache (a first run on this machine); warm: the "
                    "seeds' and baselines' curves already cached by an earlier run; "
                    "side-by-side: --rounds proposals one per round vs all in one round; "
                    "race: --rounds proposals that score below the best seed, warm, with "
                    "racing over draws (--race-draws) and without it")
    ap.add_argument("--race-draws", type=int, default=None,
                    help="the race's first draws (default: the loop's, 5); 0 evaluates every "
                    "candidate in full. --mode race runs each proposal once with these and once "
                    "in full (0)")
    ap.add_argument("--executor", choices=("local", "ray"), default="local")
    ap.add_argument("--baselines", default=None,
                    help="held-out-only baselines, comma-separated, or 'none' (default: the "
                    "loop's, cmc and dynaact; dynaact's 100-draw held-out sweep takes tens of "
                    "CPU-minutes on a cold cache)")
    ap.add_argument("--heldout-draws", type=int, default=None,
                    help="draws of the held-out step (default: the environment's); fewer when "
                    "only the per-round figures matter")
    ap.add_argument("--json", default=None, help="write the figures as JSON")
    args = ap.parse_args(argv)
    figures: dict[str, Any] = {"env": args.env, "workers": args.workers, "os_cpus": os.cpu_count(),
                               "executor": args.executor,
                               "load_avg_1m": round(os.getloadavg()[0], 2)}
    if args.mode == "side-by-side" and not 2 <= args.rounds <= 8:
        ap.error("--mode side-by-side needs --rounds between 2 and 8 (the proposals of one round)")
    ex = args.executor
    bl = None if args.baselines is None else (
        () if args.baselines.strip().lower() == "none" else
        tuple(b.strip() for b in args.baselines.split(",") if b.strip()))
    figures["baselines"] = None if bl is None else list(bl)
    with tempfile.TemporaryDirectory(prefix="autotts-discover-bench-") as tmp:
        # A private baseline cache: "cold" really starts empty, and ~/.cache is left alone.
        old = os.environ.get("AUTOTTS_CACHE_HOME")
        os.environ["AUTOTTS_CACHE_HOME"] = str(Path(tmp) / "cache")
        kw = {"executor": ex, "baselines": bl, "heldout_draws": args.heldout_draws}
        # Every mode but race honours --race-draws (race sets it per run itself).
        rd = {} if args.race_draws is None else {"race_draws": args.race_draws}
        try:
            if args.mode in ("cold", "both"):
                figures["cold"] = scripted_run(args.env, args.rounds, args.workers,
                                               Path(tmp) / "cold", **kw, **rd)
            if args.mode in ("warm", "side-by-side", "race"):
                print("filling the baseline cache first ...", file=sys.stderr)
                scripted_run(args.env, 0, args.workers, Path(tmp) / "fill", **kw)
            if args.mode in ("warm", "both"):
                figures["warm"] = scripted_run(args.env, args.rounds, args.workers,
                                               Path(tmp) / "warm", **kw, **rd)
            if args.mode == "race":
                rk = {**kw, "proposals": [*RACE_PROPOSALS, _best_seed_copy()]}
                figures["raced"] = scripted_run(args.env, args.rounds, args.workers,
                                                Path(tmp) / "raced", race_draws=args.race_draws,
                                                **rk)
                figures["in_full"] = scripted_run(args.env, args.rounds, args.workers,
                                                  Path(tmp) / "in-full", race_draws=0, **rk)
            if args.mode == "side-by-side":
                figures["one_per_round"] = scripted_run(
                    args.env, args.rounds, args.workers, Path(tmp) / "sequential", **kw, **rd)
                figures["side_by_side"] = scripted_run(
                    args.env, 1, args.workers, Path(tmp) / "side-by-side",
                    candidates=args.rounds, **kw, **rd)
        finally:
            if old is None:
                os.environ.pop("AUTOTTS_CACHE_HOME", None)
            else:
                os.environ["AUTOTTS_CACHE_HOME"] = old
    print(json.dumps(figures, indent=2))
    for mode in ("cold", "warm", "one_per_round", "side_by_side", "raced", "in_full"):
        if mode in figures:
            f = figures[mode]
            print(f"{mode}: non-LLM time of a {f['rounds']}-round scripted run "
                  f"({f['candidates']} candidates): {f['non_llm_s']:.1f} s (wall "
                  f"{f['wall_s']:.1f} s, LLM {f['llm_s']:.2f} s, CPU {f['cpu_s']:.1f} s, "
                  f"{args.workers} workers, {ex} executor)")
            print(f"  prompt characters per round: {f['prompt_chars_per_round']}")
            print(f"  wall time per round (s): {f['round_wall_s']}")
            print(f"  CPU time per round (s, all processes): {f['round_cpu_s']}")
            for n, ph in enumerate(f["round_phases_s"], 1):
                print(f"  round {n} phases (wall s): {_phases(ph)}")
            ends = {k: v for k, v in f["phases_s"].items() if k in RUN_PHASES}
            print(f"  once per run (wall s): {_phases(ends)}")
    if "raced" in figures:
        a, b = figures["raced"], figures["in_full"]
        for r in a["race"]:
            print(f"  race {r['candidate']}: {'stopped' if r['stop'] else 'continued'} after "
                  f"{r['draws']}/{r['total']} draws, objective {r['objective']:.2f}, bound "
                  f"{r['bound']:.2f}, best {r['best']:.2f}")
        figures["race_saving"] = {
            "non_llm": round(b["non_llm_s"] / a["non_llm_s"], 3),
            "cpu": round(b["cpu_s"] / a["cpu_s"], 3)}
        print(f"racing: non-LLM time {a['non_llm_s']:.1f} s vs {b['non_llm_s']:.1f} s in full "
              f"({figures['race_saving']['non_llm']:.2f}×), CPU {a['cpu_s']:.1f} s vs "
              f"{b['cpu_s']:.1f} s ({figures['race_saving']['cpu']:.2f}×)")
    if "side_by_side" in figures:
        a, b = figures["one_per_round"], figures["side_by_side"]
        figures["speedup_side_by_side"] = round(a["non_llm_s"] / b["non_llm_s"], 3)
        print(f"side by side: {figures['speedup_side_by_side']:.2f}× faster than one per round")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
