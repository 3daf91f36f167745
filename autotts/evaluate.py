"""Evaluation (DESIGN §6): run a controller over stores × β × draws and score it.

Running and scoring are separate on purpose. `run_block` replays episodes and returns only what the
controller answered and what it spent; it never sees a gold answer, so the same function runs inside
the sandbox. `evaluate` scores those answers against the gold classes it alone holds.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autotts import controller as ctl
from autotts.draws import PROTOCOLS, draw_order
from autotts.engine import NO_ANSWER, Episode, InvalidAction, Question
from autotts.errors import AutoTTSError, ConfigError
from autotts.store import ReplayData, Store, open_store

ERROR_KINDS = ("invalid_action", "exception", "non_answer")


class EvaluationError(AutoTTSError):
    """An episode failed and the caller asked evaluation to stop (on_error='raise')."""


@dataclass(frozen=True)
class Protocol:
    draws: int = 100
    protocol: str = "shuffle"
    pool: int | None = None
    seed: int = 0
    probe_cost: int = 0
    budget: int | None = None

    def check(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {self.protocol!r} (expected shuffle or subsample)")
        if self.draws < 1:
            raise ConfigError(f"--draws must be at least 1, got {self.draws}")
        if self.pool is not None and self.pool < 1:
            raise ConfigError(f"--pool must be at least 1, got {self.pool}")
        if self.probe_cost < 0:
            raise ConfigError(f"probe cost must be >= 0, got {self.probe_cost}")
        if self.budget is not None and self.budget < 0:
            raise ConfigError(f"budget must be >= 0, got {self.budget}")


@dataclass
class BlockResult:
    """What a controller did on draws [draw_lo, draw_hi) of one store: no gold anywhere."""

    answers: np.ndarray  # int32 [D, Q]; -1 = no answer
    tokens: np.ndarray  # int64 [D, Q]
    probes: np.ndarray  # int32 [D, Q]
    opened: np.ndarray  # int32 [D, Q]
    errors: list[dict[str, Any]] = field(default_factory=list)
    traces: list[dict[str, Any]] | None = None


class _Questions:
    """Per-store lazily prepared `Question`s (the engine's layout), shared by all runs."""

    def __init__(self, data: ReplayData) -> None:
        self.data = data
        self._qs: list[Question | None] = [None] * data.num_questions

    def __getitem__(self, q: int) -> Question:
        item = self._qs[q]
        if item is None:
            item = self._qs[q] = Question(self.data, q)
        return item


def _controller_lines(exc: BaseException, path: str) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
    where = "; ".join(f"line {f.lineno}: {(f.line or '').strip()}" for f in frames[-3:])
    return f"{type(exc).__name__}: {exc}" + (f" (at {where})" if where else "")


def run_block(
    questions: _Questions,
    spec: ctl.ControllerSpec,
    config: dict[str, Any],
    proto: Protocol,
    draw_lo: int,
    draw_hi: int,
    *,
    store_name: str = "",
    on_error: str = "raise",
    trace: bool = False,
    deadline: Callable[[], None] | None = None,
) -> BlockResult:
    data = questions.data
    nq, nd = data.num_questions, draw_hi - draw_lo
    answers = np.full((nd, nq), NO_ANSWER, dtype=np.int32)
    tokens = np.zeros((nd, nq), dtype=np.int64)
    probes = np.zeros((nd, nq), dtype=np.int32)
    opened = np.zeros((nd, nq), dtype=np.int32)
    errors: list[dict[str, Any]] = []
    traces: list[dict[str, Any]] | None = [] if trace else None
    cls = spec.cls
    for di in range(nd):
        draw = draw_lo + di
        for q in range(nq):
            question = questions[q]
            order = draw_order(
                proto.protocol, draw, q, question.num_branches, seed=proto.seed, n=proto.pool
            )
            ep = Episode(
                question, order, probe_cost=proto.probe_cost, budget=proto.budget, trace=trace
            )
            kind = message = None
            try:
                ans = cls(**config).run(ep)
            except InvalidAction as e:
                kind, message, ans = "invalid_action", str(e), None
            except Exception as e:  # the controller's own bug: report it, with its own lines
                kind, message, ans = "exception", _controller_lines(e, spec.path), None
            if kind is None:
                if ans is None:
                    ans = NO_ANSWER
                elif isinstance(ans, bool) or not isinstance(ans, int | np.integer):
                    kind, message = "non_answer", f"run() returned {ans!r:.80}, not an answer class"
                    ans = NO_ANSWER
            if kind is not None:
                err = {
                    "kind": kind,
                    "store": store_name,
                    "question": q,
                    "draw": draw,
                    "step": ep.num_actions,
                    "message": message,
                }
                if on_error == "raise":
                    raise EvaluationError(
                        f"{spec.name} on {store_name}, question {q}, draw {draw}, step "
                        f"{ep.num_actions}: {kind}: {message}"
                    )
                errors.append(err)
                ans = NO_ANSWER
            a = int(ans)
            answers[di, q] = a if a >= 0 else NO_ANSWER
            tokens[di, q] = ep.tokens
            probes[di, q] = ep.num_probes
            opened[di, q] = ep.num_opened
            if traces is not None:
                traces.append({"question": q, "draw": draw, "events": ep._events()})
        if deadline is not None:
            deadline()
    return BlockResult(answers, tokens, probes, opened, errors, traces)


# ---- process fan-out -------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _worker_init(store_paths: list[str] | None) -> None:
    # Under fork the parent's prepared stores are already here; under spawn, load them by path.
    if store_paths is not None and "questions" not in _WORKER:
        _WORKER["questions"] = [_Questions(open_store(p).replay()) for p in store_paths]


def _worker_run(unit: tuple[Any, ...]) -> tuple[int, int, int, BlockResult]:
    s, r, lo, hi, spec_path, config, proto, store_name, on_error, trace = unit
    spec = ctl.load(spec_path)
    res = run_block(
        _WORKER["questions"][s], spec, config, proto, lo, hi,
        store_name=store_name, on_error=on_error, trace=trace,
    )
    return s, r, lo, res


@dataclass
class Evaluation:
    rows: list[dict[str, Any]]
    episodes: list[dict[str, Any]] | None = None
    traces: list[dict[str, Any]] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)


def _mean_se(per_draw: np.ndarray) -> tuple[float, float]:
    mean = float(per_draw.mean())
    if len(per_draw) < 2:
        return mean, 0.0
    return mean, float(per_draw.std(ddof=1) / math.sqrt(len(per_draw)))


def _as_store(s: str | os.PathLike[str] | Store) -> Store:
    return s if isinstance(s, Store) else open_store(s)


def evaluate(
    controller: str | ctl.ControllerSpec,
    stores: Sequence[str | os.PathLike[str] | Store],
    betas: Sequence[float | None] | None = None,
    proto: Protocol | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    workers: int = 1,
    episodes: bool = False,
    traces: bool = False,
    on_error: str = "raise",
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Evaluate one controller over stores × β (× the protocol's draws).

    betas=None (or [None]) runs the constructor defaults with `overrides` and reports beta as
    None. Results are identical for any number of workers: every episode is deterministic and
    does not depend on which process runs it."""
    proto = proto or Protocol()
    proto.check()
    if on_error not in ("raise", "record"):
        raise ConfigError(f"on_error must be 'raise' or 'record', got {on_error!r}")
    spec = controller if isinstance(controller, ctl.ControllerSpec) else ctl.load(controller)
    loaded = [_as_store(s) for s in stores]
    if not loaded:
        raise ConfigError("no store to evaluate on")
    runs: list[tuple[float | None, dict[str, Any]]] = []
    for beta in list(betas) if betas else [None]:
        runs.append((beta, spec.config(beta, overrides)))
    questions = [_Questions(s.replay()) for s in loaded]
    golds = [s.gold_classes() for s in loaded]

    n_units_wanted = max(1, workers) * 4
    per_sr = max(1, math.ceil(n_units_wanted / (len(loaded) * len(runs))))
    chunk = max(1, math.ceil(proto.draws / per_sr))
    units = []
    for s, st in enumerate(loaded):
        for r, (_, cfg) in enumerate(runs):
            for lo in range(0, proto.draws, chunk):
                hi = min(proto.draws, lo + chunk)
                units.append((s, r, lo, hi, spec.path, cfg, proto, st.name, on_error, traces))

    results: dict[tuple[int, int], list[tuple[int, BlockResult]]] = {}
    done = 0
    if workers <= 1 or len(units) == 1:
        _WORKER["questions"] = questions
        try:
            for u in units:
                s, r, lo, res = _worker_run(u)
                results.setdefault((s, r), []).append((lo, res))
                done += 1
                if progress:
                    progress(done, len(units))
        finally:
            _WORKER.pop("questions", None)
    else:
        if "fork" in mp.get_all_start_methods():
            ctx = mp.get_context("fork")
            _WORKER["questions"] = questions
            init_args: tuple[Any, ...] = (None,)
        else:
            ctx = mp.get_context("spawn")
            init_args = ([s.path for s in loaded],)
        try:
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                     initargs=init_args) as pool:
                for s, r, lo, res in pool.map(_worker_run, units):
                    results.setdefault((s, r), []).append((lo, res))
                    done += 1
                    if progress:
                        progress(done, len(units))
        finally:
            _WORKER.pop("questions", None)

    rows: list[dict[str, Any]] = []
    ep_rows: list[dict[str, Any]] | None = [] if episodes else None
    all_traces: list[dict[str, Any]] | None = [] if traces else None
    all_errors: list[dict[str, Any]] = []
    for s, st in enumerate(loaded):
        gold = golds[s]
        for r, (beta, cfg) in enumerate(runs):
            parts = sorted(results[(s, r)], key=lambda x: x[0])
            ans = np.concatenate([p.answers for _, p in parts])
            tok = np.concatenate([p.tokens for _, p in parts])
            correct = (ans == gold[None, :]) & (ans >= 0)
            acc, acc_se = _mean_se(correct.mean(axis=1) * 100.0)
            tmean, tse = _mean_se(tok.mean(axis=1))
            errs = [e for _, p in parts for e in p.errors]
            all_errors.extend(errs)
            rows.append(
                {
                    "store": st.name,
                    "controller": spec.name,
                    "config": cfg,
                    "beta": beta,
                    "accuracy": acc,
                    "accuracy_se": acc_se,
                    "tokens": tmean,
                    "tokens_se": tse,
                    "draws": proto.draws,
                    "questions": st.num_questions,
                    "errors": len(errs),
                }
            )
            if ep_rows is not None:
                probes = np.concatenate([p.probes for _, p in parts])
                opened = np.concatenate([p.opened for _, p in parts])
                for d in range(ans.shape[0]):
                    for q in range(ans.shape[1]):
                        ep_rows.append(
                            {
                                "store": st.name,
                                "controller": spec.name,
                                "beta": beta,
                                "draw": d,
                                "question": q,
                                "answer": int(ans[d, q]),
                                "correct": bool(correct[d, q]),
                                "tokens": int(tok[d, q]),
                                "probes": int(probes[d, q]),
                                "opened": int(opened[d, q]),
                            }
                        )
            if all_traces is not None:
                for _, p in parts:
                    for t in p.traces or []:
                        all_traces.append({"store": st.name, "beta": beta, "config": cfg, **t})
    return Evaluation(rows, ep_rows, all_traces, all_errors)
