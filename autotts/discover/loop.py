"""The discovery loop (DESIGN §8): rounds of propose → check → evaluate → record, then one
selection on the search split and one evaluation of the selected controller (with the built-in
baselines) on the held-out split.

Held-out isolation: the held-out paths are read from the environment in `_final_step` only, after
the last round; nothing before it (the prompt, the seeds, the smoke run, the sweeps, the digests)
touches them.

Determinism: a round's prompt depends only on the environment, the search stores, the seeds and
the completed rounds, so a round redone after a crash sends the same messages, hits the response
cache and produces the same files.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotts import controller as ctl
from autotts.discover import baselines
from autotts.discover.agent import Agent, AgentError, ChatResult, SpendCapReached
from autotts.discover.candidates import (
    OK,
    STOPPED,
    Backend,
    CandidateFailure,
    SandboxBackend,
    controller_name,
    extract_candidates,
    first_error_verdict,
    objective,
    smoke_betas,
    subset_store,
    verdict,
)
from autotts.discover.config import DiscoverConfig
from autotts.discover.digest import SearchData, attach_answers, make_digest, store_signals
from autotts.discover.prompt import (
    PROMPT_VERSION,
    best_overall,
    best_record,
    best_seed,
    build_messages,
    critic_messages,
    critic_verdict,
    render_prompt,
)
from autotts.discover.race import Decision, decide
from autotts.discover.rundir import (
    RunDir,
    final_entry,
    index_entry,
    label,
    slot_dir,
)
from autotts.discover.significance import (
    adjust,
    delta_auc,
    describe,
    per_question_table,
    versus_best_seed,
)
from autotts.envdef import EnvDef, load_env
from autotts.errors import AutoTTSError, ConfigError
from autotts.evaluate import Evaluation, evaluate, knob_key
from autotts.fsio import dumps, read_json, write_json, write_text
from autotts.stats import question_clusters
from autotts.store import Store, open_store
from autotts.summary import summarize

QUARTER_AFTER_S = 10.0  # a held-out evaluation reports 25/50/75% only once it has run this long
EXAMPLE = "sc"  # the complete example controller shown in the contract
# "kill:<round>:<point>": SIGKILL there (crash tests); "int:<round>:<point>": SIGINT, as Ctrl-C
FAULT_ENV = "AUTOTTS_DISCOVER_FAULT"

Progress = Callable[[str], None]


def _fault(point: str, n: int) -> None:
    fault = os.environ.get(FAULT_ENV)
    if fault == f"kill:{n}:{point}":
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault == f"int:{n}:{point}":
        os.kill(os.getpid(), signal.SIGINT)


def _sha256_file(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def store_identity(store: Store) -> str:
    m = store.manifest
    return str(m.get("content_hash") or (m.get("source") or {}).get("sha256") or store.name)


class Timer:
    """Wall time per phase: the bench subtracts the agent's share to get non-LLM time. Phases of
    candidates evaluated side by side add up, so their sum can exceed the wall time."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, phase: str, seconds: float) -> None:
        with self._lock:
            self.phases[phase] = self.phases.get(phase, 0.0) + seconds

    def time(self, phase: str) -> Any:
        timer = self

        class _Ctx:
            def __enter__(self) -> None:
                self.t0 = time.perf_counter()

            def __exit__(self, *exc: Any) -> None:
                timer.add(phase, time.perf_counter() - self.t0)

        return _Ctx()


class Discovery:
    def __init__(self, cfg: DiscoverConfig, *, backend: Backend | None = None,
                 progress: Progress | None = None) -> None:
        self.cfg = cfg
        self.env: EnvDef = load_env(cfg.env)
        self.rd = RunDir(cfg.run_dir)
        self.progress = progress or (lambda msg: None)
        self._backend = backend
        self.timer = Timer()
        # Trace the digest's draws within the sweep (False: a second, traced evaluation, as
        # before; the two give the same digest, which a test checks).
        self.fold_traces = True
        self.search_paths = self.env.split_paths("search")
        self.search_stores = [open_store(p) for p in self.search_paths]
        self.env.check_delta(self.search_stores, "search")
        self.store_names = [s.name for s in self.search_stores]
        self.proto = cfg.protocol(self.env)
        self.search = SearchData(self.search_stores, self.proto)
        self.stats = [summarize(s) for s in self.search_stores]
        self._signals: dict[str, dict[str, Any]] | None = None
        self._noise: dict[tuple[int, int, str], dict[str, Any] | None] = {}
        self._versus: dict[tuple[str, str], dict[str, Any] | None] = {}
        self.example_source = ctl.per_episode_source(Path(ctl.load(EXAMPLE).path).read_text())
        self.history: list[dict[str, Any]] = []  # one record per candidate of each round
        self.agent: Agent | None = None
        self._executor: Any = None
        self._froze = False  # whether run() froze the collector's objects (thawed at its end)
        self._digest_lock = threading.Lock()  # SearchData's caches are filled lazily
        self._setup_lock = threading.Lock()
        self._seeds_for_report: Sequence[dict[str, Any]] = ()

    # ---- identity and seeds -------------------------------------------------------------------

    def seed_specs(self) -> list[ctl.ControllerSpec]:
        return [ctl.load(name) for name in self.cfg.seeds]

    def identity(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "env": self.env.name,
            "env_sha256": _sha256_file(self.env.path),
            "search_stores": [[s.name, store_identity(s)] for s in self.search_stores],
            "model": c.model,
            "base_url": c.base_url,
            "seed": c.seed,
            "seeds": [[s.name, _sha256_file(s.path)] for s in self.seed_specs()],
            "critic": c.critic,
            "candidates": c.candidates,
            "smoke": [c.smoke_questions, c.smoke_draws],
            "trace_draws": c.trace_draws,
            "params": c.request_params(),
            # Racing changes what a stopped candidate's round records (and so later prompts);
            # absent when off, so run directories made before racing resume unchanged with it off.
            **({"race": [c.race_draws, c.race_z]} if c.race_draws else {}),
        }

    def _seed_key(self) -> str:
        ident = self.identity()
        blob = dumps({k: ident[k] for k in ("env_sha256", "search_stores", "seed", "seeds",
                                            "trace_draws")}, indent=None)
        return hashlib.sha256(blob.encode()).hexdigest()

    def seeds(self) -> list[dict[str, Any]]:
        """The seed controllers on the search split: computed once per run directory."""
        key = self._seed_key()
        if self.rd.seeds.is_file():
            data = read_json(self.rd.seeds)
            if data.get("key") == key:
                return data["seeds"]
        out = []
        for spec in self.seed_specs():
            self.progress(f"seed {spec.name}: β sweep on {len(self.search_stores)} search stores")
            with self.timer.time("seeds"):
                out.append(self._eval_seed(spec))
        self.rd.path.mkdir(parents=True, exist_ok=True)
        write_json(self.rd.seeds, {"key": key, "seeds": out})
        # Always what the file holds: a prompt built from freshly computed seeds must equal one
        # built after a restart (JSON has no tuples, numpy scalars or dict order of its own).
        return read_json(self.rd.seeds)["seeds"]

    def _eval_seed(self, spec: ctl.ControllerSpec) -> dict[str, Any]:
        env = self.env
        k = baselines.key("search", Path(spec.path).read_text(),
                          [store_identity(s) for s in self.search_stores], env.betas, self.proto,
                          token_range=list(env.token_range), trace_draws=self.cfg.trace_draws,
                          example=EXAMPLE)
        return baselines.cached(k, lambda: self._compute_seed(spec))

    def _compute_seed(self, spec: ctl.ControllerSpec) -> dict[str, Any]:
        env, ex = self.env, self.executor
        ev = evaluate(spec, self.search_stores, env.betas, self.proto, episodes=True, executor=ex)
        tproto = self.cfg.protocol(env, draws=min(self.cfg.trace_draws, env.draws))
        tev = evaluate(spec, self.search_stores, env.betas, tproto, episodes=True, traces=True,
                       executor=ex)
        traces = tev.traces or []
        attach_answers(traces, tev.episodes or [])
        rows = [_clean_row(r) for r in ev.rows]
        obj, per = objective(rows, self.store_names, env.token_range)
        return {
            "name": spec.name,
            "source": (None if Path(spec.path).stem == EXAMPLE
                       else ctl.per_episode_source(Path(spec.path).read_text())),
            "rows": rows,
            "objective": obj,
            "store_objective": per,
            "digest": make_digest(self.search, rows, ev.episodes, traces),
            "per_question": per_question_table(ev.episodes),
        }

    # ---- prompt -----------------------------------------------------------------------------------

    @property
    def signals(self) -> dict[str, dict[str, Any]]:
        """The search stores' per-store signals for the prompt (computed once, deterministic)."""
        if self._signals is None:
            self._signals = store_signals(self.search)
        return self._signals

    @functools.cached_property
    def search_clusters(self) -> dict[str, str]:
        """The search stores that hold the same questions (stats.question_clusters): the paired
        interval resamples them together. Read once: building the question tables takes a few
        hundred milliseconds for the reference stores."""
        return question_clusters(self.search_stores)

    def noise(self, seeds: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
        """The paired interval of the best candidate's objective minus the best seed's, on the
        search split (None until there is an eligible candidate)."""
        best, bs = best_record(self.history), best_seed(seeds)
        if best is None or bs is None or not best.get("per_question") or \
                not bs.get("per_question"):
            return None
        # The bootstrap takes about a second; the pair it compares changes only when a new
        # candidate becomes the best.
        key = (best["round"], best["slot"], bs["name"])
        if key not in self._noise:
            self._noise[key] = delta_auc(best["per_question"], bs["per_question"],
                                         self.store_names, self.env.token_range,
                                         clusters=self.search_clusters)
        return self._noise[key]

    def versus(self, seeds: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any] | None]:
        """Every other seed's and every candidate's objective minus the best seed's, each with
        its paired interval over questions (significance.delta_auc, as the lead's `noise`), for
        the standings: {"seed:NAME" or the candidate's id: interval, None where there are no
        per-question outcomes to compare}. Each pair is computed once (its records never
        change): a few tens of milliseconds each."""
        return versus_best_seed(self.history, seeds, best_seed(seeds), self.store_names,
                                self.env.token_range, self.search_clusters, self._versus)

    def messages(self, seeds: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
        return build_messages(env=self.env, stats=self.stats, example_source=self.example_source,
                              seeds=seeds, history=self.history, recent=self.cfg.recent,
                              candidates=self.cfg.candidates, signals=self.signals,
                              noise=self.noise(seeds), versus=self.versus(seeds))

    # ---- the run ----------------------------------------------------------------------------------

    @property
    def executor(self) -> Any:
        """Where evaluations run (--executor): made on first use, so a run whose seeds are all
        cached never starts or joins a Ray cluster."""
        with self._setup_lock:  # candidates' threads may ask for it first, at the same moment
            if self._executor is None:
                from autotts.executors import make_executor

                self._executor = make_executor(self.cfg.executor, workers=self.cfg.workers,
                                               address=self.cfg.ray_address)
            return self._executor

    def close(self) -> None:
        """Release the executor: a Ray runtime this run started stops (one it joined keeps
        running)."""
        if hasattr(self._executor, "close"):
            self._executor.close()
        if isinstance(self._backend, SandboxBackend):
            self._backend.executor = None
        self._executor = None

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            executor = None if self.cfg.executor == "local" else self.executor
            with self._setup_lock:
                if self._backend is None:
                    self._backend = SandboxBackend(self.cfg.sandbox_limits, executor,
                                                   self.cfg.allow_weak_sandbox)
        return self._backend

    def load_history(self) -> list[dict[str, Any]]:
        return [rec for n in self.rd.completed() for rec in self.rd.load_round(n)]

    def rounds_done(self) -> int:
        return max((r["round"] for r in self.history), default=0)

    def dry_run(self) -> str:
        """The next (for a new run: the first) prompt. No HTTP call, no held-out store, and
        nothing written but the seeds' cache."""
        self.history = self.load_history()
        try:
            return render_prompt(self.messages(self.seeds()))
        finally:
            self.close()

    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        finally:
            if self._froze:
                self._froze = False
                gc.unfreeze()
            self.close()
            self.rd.unlock()

    def _run(self) -> dict[str, Any]:
        cfg, rd = self.cfg, self.rd
        t_start = time.perf_counter()
        if not cfg.model:
            raise ConfigError("no model: give --model or set AUTOTTS_MODEL")
        resumed = rd.prepare(self.identity(), {"env_path": str(Path(self.env.path).resolve()),
                                               "rounds": cfg.rounds,
                                               "token_range": list(self.env.token_range),
                                               # the report's standings resample as the
                                               # prompt's did
                                               "search_clusters": self.search_clusters})
        self.history = self.load_history()
        if resumed:
            self.progress(f"resuming {rd.path}: {self.rounds_done()} round(s) complete")
        if rd.final_done() and cfg.rounds > self.rounds_done():
            raise ConfigError(
                f"{rd.path} is finalized (its held-out evaluation is done, once); start a new "
                f"--run-dir for more rounds")
        agent = self.agent = Agent(cfg, rd.requests)
        agent.check_budget()
        seeds = self.seeds()
        self._seeds_for_report = seeds
        # Start-up's objects (the stores as loaded, the search data, the seeds' figures) live
        # until the run ends: frozen, a round's collections skip them (a full collection in the
        # sweep's scoring walked them all again: ~0.15 s of a discovery round's single-threaded
        # time). Thawed when the run ends; not frozen where objects are frozen already (the
        # caller's freeze is left as it is, as autotts.sandbox.evaluation does).
        if gc.get_freeze_count() == 0:
            gc.freeze()
            self._froze = True
        status, message = "complete", ""
        try:
            if not rd.final_done():
                smoke = subset_store(self.search_stores[0], cfg.smoke_questions)
                for n in range(self.rounds_done() + 1, cfg.rounds + 1):
                    if agent.cap_reached:
                        status = "budget_exhausted"
                        message = f"spend cap ${cfg.budget_usd:.2f} reached"
                        break
                    try:
                        recs = self.round(n, seeds, smoke)
                    except SpendCapReached as e:
                        status, message = "budget_exhausted", str(e)
                        break
                    for rec in recs:
                        self.history.append(rec)
                        self._report_round(rec)
            if status == "complete":
                self.final_step(seeds)
        except AgentError as e:
            self.write_summary(seeds, "error", str(e), time.perf_counter() - t_start)
            raise
        except KeyboardInterrupt:
            self.write_summary(seeds, "interrupted", "interrupted; rerun the same command to "
                               "resume", time.perf_counter() - t_start)
            raise
        if status == "budget_exhausted":
            message += (f" after {self.rounds_done()} round(s); rerun with a higher --budget-usd "
                        f"to continue, or with --rounds {self.rounds_done()} to select and "
                        "evaluate on the held-out split")
            self.progress(message)
        self.write_summary(seeds, status, message, time.perf_counter() - t_start)
        self.write_report()  # reads the summary; the summary then gets the report's time too
        return self.write_summary(seeds, status, message, time.perf_counter() - t_start)

    def _report_round(self, rec: dict[str, Any]) -> None:
        v = rec["verdict"]
        obj = "" if rec.get("objective") is None else f", objective {rec['objective']:.2f}"
        part, race = rec.get("partial"), rec.get("race") or {}
        if part and part.get("objective") is not None:
            obj = (f", partial objective {part['objective']:.2f} over {part['draws']}/"
                   f"{part['of']} draws (bound {race.get('bound', math.nan):.2f} < best "
                   f"{race.get('best', math.nan):.2f})")
        top = best_overall(self.history, self._seeds_for_report)
        best_txt = ("none yet" if top is None else
                    f"seed {top[1]['name']} ({top[1]['objective']:.2f})" if top[0] == "seed" else
                    f"{label(top[1]['id'], top[1]['name'])} ({top[1]['objective']:.2f})")
        spent = self.agent.spent_usd if self.agent else 0.0
        cap = "" if self.cfg.budget_usd is None else f" / ${self.cfg.budget_usd:.2f}"
        self.progress(f"{self._where(rec['round'], rec['slot'])}: {rec.get('name') or '–'}: "
                      f"{v['kind']}{'' if v['kind'] == OK else ' at ' + v['stage']}{obj} | "
                      f"spent ${spent:.4f}{cap} | best so far: {best_txt}")

    def _where(self, n: int, slot: int) -> str:
        where = f"round {n}/{self.cfg.rounds}"
        return where if self.cfg.candidates == 1 else f"{where} c{slot}"

    def round(self, n: int, seeds: Sequence[dict[str, Any]], smoke: Store
              ) -> list[dict[str, Any]]:
        """Propose → (critic) → evaluate the response's candidates side by side → record; the
        round's history records, one per candidate slot."""
        cfg, rd = self.cfg, self.rd
        assert self.agent is not None
        tmp = rd.begin_round(n)
        try:
            with self.timer.time("prompt"):
                messages = self.messages(seeds)
                write_text(tmp / "prompt.md", render_prompt(messages))
                write_json(tmp / "messages.json", messages)
            self.progress(f"round {n}/{cfg.rounds}: asking {cfg.model}")
            chat = self.agent.chat(messages, purpose="propose", round_no=n)
            write_json(tmp / "response.json", chat.response)
            _fault("response", n)
            costs = [chat.accounting("propose")]
            sources, parse_verdict = extract_candidates(chat.content, cfg.candidates)
            slots = ([_Slot(j, src) for j, src in enumerate(sources, 1)]
                     or [_Slot(1, None, parse_verdict)])
            for sl in slots:
                d = slot_dir(tmp, sl.j)
                d.mkdir()
                if sl.source is None:
                    continue
                write_text(d / "candidate.py", sl.source)
                if cfg.critic:  # one review per file, in order: a redone round hits the cache
                    critic = self._critic(n, sl.source)
                    if critic is not None:
                        costs.append(critic[0].accounting("critic"))
                        write_json(d / "critic.json", {"approved": critic[1],
                                                       "review": critic[2]})
                        if not critic[1]:
                            sl.verdict = verdict("critic_rejected", "critic",
                                                 "the critic rejected the proposal before "
                                                 "evaluation: " + critic[2][:1500])
            # The best before this round: candidates of one round race against the same bar,
            # whatever order they finish in.
            top = best_overall(self.history, seeds)
            best = None if top is None else (
                float(top[1]["objective"]),
                f"seed {top[1]['name']}" if top[0] == "seed"
                else label(top[1]["id"], top[1]["name"]))
            self._evaluate_slots(tmp, n, [sl for sl in slots if sl.verdict is None], smoke,
                                 best)
            for sl in slots:
                d = slot_dir(tmp, sl.j)
                assert sl.verdict is not None
                write_json(d / "verdict.json", sl.verdict)
                # What the candidate printed: kept whole (as capped by the sandbox) here, and
                # only an escaped excerpt of it ever reaches a prompt (issue 21).
                printed = sl.result.pop("stdout", "")
                if printed:
                    write_text(d / "stdout.txt", printed)
                write_json(d / "results.json", {"round": n, "slot": sl.j, "name": sl.name,
                                                "eligible": sl.verdict["kind"] == OK,
                                                **sl.result})
                write_json(d / "digest.json", sl.digest)
            write_json(tmp / "cost.json", {
                "requests": costs,
                "prompt_tokens": sum(c["prompt_tokens"] for c in costs),
                "completion_tokens": sum(c["completion_tokens"] for c in costs),
                "cost_usd": None if any(c["cost_usd"] is None for c in costs)
                else round(sum(c["cost_usd"] for c in costs), 8),
            })
            _fault("evaluated", n)
            rd.commit_round(n, tmp)
        except BaseException:
            # A failure we can see (not a kill): drop the half round; a rerun redoes it.
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fault("committed", n)
        recs = rd.load_round(n)
        for rec in recs:
            rd.append_index(index_entry(rec))
        return recs

    def _evaluate_slots(self, tmp: Path, n: int, slots: Sequence[_Slot], smoke: Store,
                        best: tuple[float, str] | None = None) -> None:
        """Evaluate candidates side by side, one thread each: the threads only wait on sandbox
        processes (here, or started by Ray workers), so the GIL is not the limit. Locally they
        share --workers; on Ray the cluster's CPUs are shared by its scheduler."""
        if not slots:
            return
        # Start or join Ray (if asked) here, in the main thread: a Ray driver made in a thread
        # that then ends loses its object store connection.
        _ = self.backend
        workers = max(1, self.cfg.workers // len(slots))

        def one(sl: _Slot) -> None:
            self.progress(f"{self._where(n, sl.j)}: evaluating {sl.name}")
            sl.verdict, sl.result, sl.digest = self.evaluate_candidate(
                slot_dir(tmp, sl.j) / "candidate.py", sl.source or "", smoke,
                fname=f"rounds/{n:04d}/c{sl.j}/candidate.py", workers=workers, best=best)

        if len(slots) == 1:
            one(slots[0])
            return
        with ThreadPoolExecutor(len(slots), thread_name_prefix="candidate") as pool:
            futures = [pool.submit(one, sl) for sl in slots]
            try:
                for f in futures:
                    f.result()  # in slot order: the first failure in proposal order is raised
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    def _critic(self, n: int, source: str) -> tuple[ChatResult, bool, str] | None:
        assert self.agent is not None
        try:
            res = self.agent.chat(critic_messages(source, self.example_source), purpose="critic",
                                  round_no=n, model=self.cfg.critic)
        except SpendCapReached:
            return None  # the proposal is paid for: evaluate it without a review
        approved, review = critic_verdict(res.content)
        return res, approved, review

    def evaluate_candidate(self, path: Path, source: str, smoke: Store, *, fname: str,
                           workers: int | None = None, best: tuple[float, str] | None = None
                           ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """admission → smoke → sweep (raced against `best`, (objective, who), when racing is
        on) → traces; (verdict, results, digest). `fname` names the file in tracebacks. Safe to
        call from several threads at once."""
        env, cfg, be = self.env, self.cfg, self.backend
        workers = workers or cfg.workers
        result: dict[str, Any] = {"rows": [], "objective": None, "store_objective": {},
                                  "monotone": None, "errors": [], "n_errors": 0}
        with self.timer.time("admit"):
            v = be.admit(source, fname)
        if v is not None:
            return v, result, {}
        try:
            with self.timer.time("smoke"):
                # The sweep's first evaluation starts now (its workers and sandbox processes,
                # up to the knobs) and runs its batches only once the smoke has passed: the
                # start is off the round's critical path. A failing smoke calls it off.
                ahead = self._start_sweep(str(path), workers, best)
                try:
                    be.evaluate(str(path), [smoke], smoke_betas(env.betas),
                                cfg.protocol(env, draws=cfg.smoke_draws), stage="smoke",
                                on_error="raise", workers=1)
                except BaseException:
                    if ahead is not None:
                        ahead.cancel()
                    raise
            ev, traced, race = self._sweep(str(path), source, workers, best, ahead)
        except CandidateFailure as f:
            return f.verdict, result, {}
        rows = [_clean_row(r) for r in ev.rows]
        obj, per = objective(rows, self.store_names, env.token_range)
        mono = be.monotonicity(rows)
        result["stdout"] = str(getattr(ev, "stdout", "") or "")
        n_eps = len(ev.episodes or []) or sum(r["draws"] * r["questions"] for r in rows)
        if ev.errors:
            v = first_error_verdict(ev.errors, n_eps)
        elif race is not None and race.stop:
            v = verdict(STOPPED, "race", race.message(),
                        context={"draws": race.draws, "of": race.total})
        elif mono is not None:
            v = mono
        elif obj is None:
            v = verdict("non_answer", "sweep", "no finite accuracy/token point to score")
        else:
            v = verdict(OK, "sweep", "")
        result.update({
            "rows": rows, "objective": obj, "store_objective": per, "monotone": mono is None,
            "errors": [_clean_error(e) for e in ev.errors[:5]], "n_errors": len(ev.errors),
            "per_question": per_question_table(ev.episodes),
            "isolation": _applied(ev),
        })
        if race is not None and race.stop:
            # Partial figures: the rows are over the first race.draws draws (their `draws`
            # says so), and nothing that ranks candidates may read them as a full objective.
            result.update({"objective": None, "store_objective": {}, "per_question": {},
                           "partial": {"draws": race.draws, "of": race.total,
                                       "objective": obj, "store_objective": per}})
        if race is not None:
            result["race"] = race.as_dict()
        traces: list[dict[str, Any]] | None = None
        try:
            with self.timer.time("traces"):
                tev = ev if traced else be.evaluate(
                    str(path), self.search_stores, env.betas,
                    cfg.protocol(env, draws=min(cfg.trace_draws, env.draws)),
                    stage="traces", episodes=True, traces=True, on_error="record",
                    workers=workers)
            traces = tev.traces or []
            attach_answers(traces, tev.episodes or [])
        except CandidateFailure:
            traces = None  # the digest keeps its episode-level figures
        with self.timer.time("digest"), self._digest_lock:
            digest = make_digest(self.search, rows, ev.episodes, traces)
        return v, result, digest

    def _sweep_plan(self, best: tuple[float, str] | None
                    ) -> tuple[bool, tuple[int, int] | None]:
        """Whether the sweep folds the digest's traces in, and its first stage (racing) or
        None (one stage)."""
        k = min(self.cfg.trace_draws, self.env.draws)
        n = self.proto.draws
        race = self.cfg.race_draws
        return (k > 0 and self.fold_traces,
                (0, race) if best is not None and 0 < race < n else None)

    def _sweep_args(self, workers: int, traced: bool, draws: tuple[int, int] | None = None,
                    deadline: float | None = None) -> dict[str, Any]:
        """A sweep evaluation's keyword arguments (be.evaluate's)."""
        k = min(self.cfg.trace_draws, self.env.draws)
        return dict(stage="sweep", episodes=True, on_error="record", workers=workers,
                    draws=draws, deadline=deadline,
                    **({"traces": True, "trace_draws": k} if traced else {}))

    def _start_sweep(self, path: str, workers: int, best: tuple[float, str] | None) -> Any:
        """The sweep's first evaluation started ahead (the backend's `start`), or None where
        the backend cannot."""
        start = getattr(self.backend, "start", None)
        if start is None:
            return None
        traced, stage1 = self._sweep_plan(best)
        return start(path, self.search_stores, self.env.betas, self.proto,
                     **self._sweep_args(workers, traced, stage1))

    def _sweep(self, path: str, source: str, workers: int, best: tuple[float, str] | None = None,
               ahead: Any = None) -> tuple[Evaluation, bool, Decision | None]:
        """The sweep, whether it also traced the digest's draws, and the race's decision (None:
        not raced). A stopped candidate's evaluation covers the race's draws only.

        Racing (race_draws = k, when there is a best to race against and k < the draws N): draws
        [0, k) run first (traced, with the digest's draws among them), race.decide compares
        their objective's optimistic bound with the best, and a candidate not stopped runs
        draws [k, N) under the same wall-clock deadline; the stages are scored together from
        their per-draw blocks, so its numbers are those of one full sweep.

        The traced draws are
        the sweep's first `trace_draws` draws (same seed), so one evaluation can do both and
        spare a second sandbox start and those draws' untraced copies. Sound because a
        candidate cannot tell a traced episode from another (the handle has no way to ask, and
        ep.trace() returns nothing), so its swept numbers never depend on tracing. A folded
        sweep that fails in a way traces could cause (their output budget, time, memory) is
        redone untraced: the sweep's verdict is the untraced one, as before.

        `ahead`: the first evaluation (traced as folded, the first stage), started ahead by
        `_start_sweep`; it is called off here if it is not used."""
        env, be = self.env, self.backend
        fold, stage1 = self._sweep_plan(best)
        n = self.proto.draws

        def run(traced: bool, draws: tuple[int, int] | None = None,
                deadline: float | None = None) -> Evaluation:
            return be.evaluate(path, self.search_stores, env.betas, self.proto,
                               **self._sweep_args(workers, traced, draws, deadline))

        with self.timer.time("sweep"), contextlib.ExitStack() as stack:
            if ahead is not None:
                stack.callback(ahead.cancel)  # a no-op once its result() has been called
            traced = fold
            try:
                first = run(traced, stage1) if ahead is None else ahead.result()
            except CandidateFailure as f:
                if not (fold and f.verdict.get("kind") in ("output_limit", "timeout", "memory")):
                    raise
                traced = False
                first = run(traced, stage1)
            if stage1 is None:
                return first, traced, None
            assert best is not None
            decision = self._race(first, best)
            if decision is not None and decision.stop:
                return first, traced, decision
            rest = run(False, (stage1[1], n), getattr(first, "deadline", None))
            return (be.merge([first, rest], self.search_stores, env.betas, self.proto,
                             stage="sweep", episodes=True, traces=traced), traced, decision)

    def _race(self, first: Evaluation, best: tuple[float, str]) -> Decision | None:
        """The race's decision after the first draws; None (go on) when they have failing
        episodes (the candidate is ineligible anyway, and its feedback is the full sweep's, as
        without racing) or no objective."""
        if first.errors:
            return None
        rows = [_clean_row(r) for r in first.rows]
        obj, _ = objective(rows, self.store_names, self.env.token_range)
        if obj is None:
            return None
        return decide(first.episodes or [], obj, stores=self.store_names, betas=self.env.betas,
                      token_range=self.env.token_range, total=self.proto.draws,
                      z=self.cfg.race_z, best=best[0], best_name=best[1])

    # ---- selection and the held-out split -------------------------------------------------------

    def baseline_specs(self) -> list[ctl.ControllerSpec]:
        """The held-out comparison set: the seeds (shown to the agent), then the baselines (never
        shown), each once."""
        names = list(dict.fromkeys([*self.cfg.seeds, *self.cfg.baselines]))
        return [ctl.load(n) for n in names]

    def _quarters(self, what: str, k: int, n: int) -> Callable[[int, int], None]:
        """A progress callback that reports a long evaluation at 25%, 50% and 75%: one
        baseline on one held-out store can take minutes when its curve is not cached yet."""
        mark = [25]
        t0 = time.monotonic()

        def cb(done: int, total: int) -> None:
            pct = 100 * done // max(total, 1)
            # Only once it has run a while: a quick one says nothing but its completion line.
            if mark[0] < 100 and pct >= mark[0] and time.monotonic() - t0 >= QUARTER_AFTER_S:
                self.progress(f"held-out [{k}/{n}] {what}: {pct}%")
                while mark[0] <= pct:
                    mark[0] += 25

        return cb

    def final_step(self, seeds: Sequence[dict[str, Any]]) -> dict[str, Any]:
        rd, env, cfg = self.rd, self.env, self.cfg
        if rd.final_done():
            return read_json(rd.final / "selection.json")
        best = best_record(self.history)
        heldout_paths = env.split_paths("heldout")  # the first and only place they are read
        # AUTOTTS_HELDOUT_DRAWS, else the environment's `heldout_draws`, else its search draws.
        proto = cfg.protocol(env, "heldout")
        draws = proto.draws
        specs = self.baseline_specs()
        n_units = (len(specs) + (best is not None)) * len(heldout_paths)
        self.progress(f"selected: {'none' if best is None else best['name']}; evaluating it and "
                      f"{len(specs)} baselines on {len(heldout_paths)} held-out stores ({draws} "
                      f"draws): {n_units} controller × store evaluations")
        t0 = time.perf_counter()
        # Opened here, in the held-out step's time (reading 4 stores takes ~0.1 s): before the
        # line above, the last round's time counted it (autotts.discover.bench).
        held_stores = [open_store(p) for p in heldout_paths]
        names = [s.name for s in held_stores]
        done = 0

        def step(what: str, store: Store, cached: bool = False) -> None:
            # One line per controller × store, so that a long held-out step is never silent.
            nonlocal done
            done += 1
            self.progress(f"held-out [{done}/{n_units}] {what} on {store.name}"
                          + (" (cached)" if cached else ""))

        rows: list[dict[str, Any]] = []
        tables: dict[str, dict[str, Any]] = {}
        held_verdict = None
        if best is not None:
            lab = label(best["id"], best["name"])
            errors: list[dict[str, Any]] = []
            n_eps = 0
            eps: list[dict[str, Any]] = []
            # The knobs the selected candidate was searched with, per β: its held-out figures
            # must be of those (a schedule() with code execution can tell the held-out step from
            # the sweep, by its draws, and compute other knobs there).
            # (Compared with every key sorted: a record read back from disk has its keys sorted.)
            searched = {float(r["beta"]): knob_key(r["config"], nested_order=False)
                        for r in best.get("rows") or []
                        if r.get("beta") is not None and r.get("config") is not None}
            try:
                for st in held_stores:
                    ev = self.backend.evaluate(best["path"], [st], env.betas, proto,
                                               stage="heldout", episodes=True,
                                               on_error="record", workers=cfg.workers)
                    other = [r["beta"] for r in ev.rows if r.get("beta") is not None
                             and float(r["beta"]) in searched
                             and knob_key(r["config"], nested_order=False)
                             != searched[float(r["beta"])]]
                    if other:
                        raise CandidateFailure(verdict(
                            "interface", "heldout", "schedule() is not deterministic: on "
                            f"{st.name} it computed other knobs than in the search sweep at "
                            f"β={', '.join(f'{b:g}' for b in other)}; the held-out figures "
                            "would not be those of the selected controller", context={
                                "store": st.name, "beta": other[0]}))
                    rows += [{**_clean_row(r), "round": best["round"], "label": lab}
                             for r in ev.rows]
                    errors += ev.errors
                    n_eps += sum(r["draws"] * r["questions"] for r in ev.rows)
                    eps += ev.episodes or []
                    step(lab, st)
                held_verdict = (first_error_verdict(errors, n_eps) if errors
                                else verdict(OK, "heldout", ""))
                tables[lab] = per_question_table(eps)
            except CandidateFailure as f:
                held_verdict = f.verdict
            if held_verdict["kind"] != OK:
                self.progress(f"held-out: {lab}: {held_verdict['kind']}: "
                              f"{str(held_verdict['message'])[:200]}")
        for spec in specs:
            src = Path(spec.path).read_text()
            pq: dict[str, Any] = {}
            for st in held_stores:
                k = baselines.key("heldout", src, [store_identity(st)], env.betas, proto,
                                  per_question=True)
                computed = []

                def compute(spec: ctl.ControllerSpec = spec, st: Store = st,
                            computed: list[bool] = computed) -> dict[str, Any]:
                    computed.append(True)
                    ev = evaluate(spec, [st], env.betas, proto, episodes=True,
                                  executor=self.executor,
                                  progress=self._quarters(f"{spec.name} on {st.name}", done + 1,
                                                          n_units))
                    return {"rows": [_clean_row(r) for r in ev.rows],
                            "per_question": per_question_table(ev.episodes)}

                res = baselines.cached(k, compute)
                rows += [{**r, "label": spec.name} for r in res["rows"]]
                pq.update(res.get("per_question") or {})
                step(spec.name, st, cached=not computed)
            tables[spec.name] = pq
        per_controller: dict[str, dict[str, Any]] = {}
        for lab in dict.fromkeys(r["label"] for r in rows):
            obj, per = objective([r for r in rows if r["label"] == lab], names, env.token_range)
            per_controller[lab] = {"objective": obj, "store_objective": per}
        comparisons = {}
        clusters = question_clusters(held_stores)
        if best is not None and tables.get(label(best["id"], best["name"])):
            mine = tables[label(best["id"], best["name"])]
            for spec in specs:
                d = delta_auc(mine, tables.get(spec.name) or {}, names, env.token_range,
                              clusters=clusters)
                if d is not None:
                    comparisons[spec.name] = d
            adjust(comparisons)  # Holm over the baselines: one family of claims
        selection = {
            "selected": None if best is None else {
                "round": best["round"], "slot": best["slot"], "id": best["id"],
                "name": best["name"], "objective": best["objective"],
                "label": label(best["id"], best["name"])},
            "rule": "highest search-split objective among eligible candidates (earliest on ties)",
            "heldout_objective": None if best is None else
            per_controller.get(label(best["id"], best["name"]), {}).get("objective"),
            "heldout_verdict": held_verdict,
            "heldout_draws": draws,
            "heldout_stores": names,
            "seeds": list(cfg.seeds),
            "baselines": [s.name for s in specs if s.name not in cfg.seeds],
            "heldout_objectives": {lab: v["objective"] for lab, v in per_controller.items()},
            "search_objectives": {s["name"]: s["objective"] for s in seeds},
            # The selected candidate minus each baseline on the held-out split: ΔAUC with its
            # paired 95% interval over questions, per store and pooled, and the pooled one's
            # Holm-adjusted p over the baselines (significance.py).
            "comparisons": comparisons,
        }
        tmp = rd.begin_final()
        write_json(tmp / "selection.json", selection)
        # The per-question tables and which stores share questions: what the report's
        # intervals of the held-out objectives and AUCs are computed from, with no re-evaluation.
        write_json(tmp / "heldout.json", {"rows": rows, "objectives": per_controller,
                                          "comparisons": comparisons, "per_question": tables,
                                          "clusters": clusters})
        if best is not None and best.get("source"):
            write_text(tmp / "selected.py", best["source"])
        rd.commit_final(tmp)
        rd.append_index(final_entry(selection))
        self.timer.add("heldout", time.perf_counter() - t0)
        for name, d in comparisons.items():
            self.progress(f"held-out: selected minus {name}: ΔAUC {describe(d['pooled'])}")
        return selection

    # ---- summary and report ---------------------------------------------------------------------

    def write_summary(self, seeds: Sequence[dict[str, Any]], status: str, message: str,
                      wall: float) -> dict[str, Any]:
        rd, cfg = self.rd, self.cfg
        best = best_record(self.history)
        selection = read_json(rd.final / "selection.json") if rd.final_done() else None
        agent = self.agent
        costs = [r.get("cost") or {} for r in self.history]
        summary = {
            "status": status,
            "message": message,
            "env": self.env.name,
            "model": cfg.model,
            "base_url": cfg.base_url,
            "rounds_completed": self.rounds_done(),
            "candidates_evaluated": sum(1 for r in self.history if r.get("source")),
            "rounds_target": cfg.rounds,
            "spent_usd": None if agent is None else round(agent.spent_usd, 6),
            "budget_usd": cfg.budget_usd,
            "prompt_tokens": sum(c.get("prompt_tokens") or 0 for c in costs),
            "completion_tokens": sum(c.get("completion_tokens") or 0 for c in costs),
            "best": None if best is None else {"round": best["round"], "id": best["id"],
                                               "name": best["name"],
                                               "objective": best["objective"]},
            "seeds": {s["name"]: s["objective"] for s in seeds},
            "verdicts": {k: sum(1 for r in self.history if r["verdict"]["kind"] == k)
                         for k in sorted({r["verdict"]["kind"] for r in self.history})},
            "selection": selection,
            "this_invocation": {
                "executor": cfg.executor if cfg.executor == "local" else
                f"{cfg.executor} ({cfg.ray_address or 'local runtime'})",
                "wall_s": round(wall, 3),
                "http_calls": 0 if agent is None else agent.http_calls,
                "llm_s": 0.0 if agent is None else round(agent.llm_seconds, 3),
                "phases_s": {k: round(v, 3) for k, v in self.timer.phases.items()},
            },
            "prompt_version": PROMPT_VERSION,
            "isolation": _applied(self._backend),  # in this invocation's latest evaluation
            "allow_weak_sandbox": cfg.allow_weak_sandbox,
        }
        write_json(rd.summary, summary)
        return summary

    def write_report(self) -> None:
        from autotts.discover.runreport import write_run_report

        with self.timer.time("report"):
            try:
                write_run_report(self.rd.path, self.rd.report)
            except AutoTTSError as e:
                self.progress(f"report skipped: {e}")


@dataclass
class _Slot:
    """One candidate file of a round's response, while the round is built."""

    j: int
    source: str | None
    verdict: dict[str, Any] | None = None
    result: dict[str, Any] = field(default_factory=lambda: {
        "rows": [], "objective": None, "store_objective": {}, "monotone": None, "errors": [],
        "n_errors": 0})
    digest: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str | None:
        return controller_name(self.source) if self.source else None


def _applied(ev: Any) -> dict[str, bool]:
    """The OS-level isolation a sandboxed evaluation (or the backend's latest) applied: the
    mechanisms only, not the timings, so that a redone round writes the same bytes."""
    iso = getattr(ev, "isolation", None) or {}
    return {str(k): v for k, v in iso.items() if isinstance(v, bool)}


def _clean_row(r: dict[str, Any]) -> dict[str, Any]:
    keep = ("store", "controller", "config", "beta", "accuracy", "accuracy_se", "tokens",
            "tokens_se", "draws", "questions", "errors")
    return {k: r.get(k) for k in keep if k in r}


def _clean_error(e: dict[str, Any]) -> dict[str, Any]:
    return {k: e.get(k) for k in ("kind", "store", "question", "draw", "step", "message")
            if k in e}


def run_discovery(cfg: DiscoverConfig, *, backend: Backend | None = None,
                  progress: Progress | None = None) -> dict[str, Any]:
    """Run (or resume) a discovery run; its summary."""
    return Discovery(cfg, backend=backend, progress=progress).run()


def first_prompt(cfg: DiscoverConfig, *, progress: Progress | None = None) -> str:
    """`--dry-run`: the prompt the next round would send."""
    return Discovery(cfg, progress=progress).dry_run()
