"""One block of episodes: the unit of evaluation work, below both the evaluator and the executors.

`run_block` replays episodes and returns only what the controller answered and what it spent; it
never sees a gold answer, so the same function runs inside a local worker, a Ray task or the
sandbox's judge. `autotts.evaluate` scores its answers against the gold classes it alone holds;
`autotts.executors` decide where units run. Neither imports the other.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from autotts import controller as ctl
from autotts.batch import EpisodeBatch
from autotts.draws import PROTOCOLS, draw_order
from autotts.engine import NO_ANSWER, Episode, InvalidAction, Question, store_class
from autotts.errors import ConfigError, EvaluationError

if TYPE_CHECKING:  # the sandbox process imports this module, never the store (pyarrow)
    from autotts.store import ReplayData


@dataclass(frozen=True)
class EvalProtocol:
    """How episodes are drawn and charged (DESIGN §3): draws per question, the draw protocol,
    the pool size, the seed, what a probe costs and the token budget."""

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
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")
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


class Questions:
    """Per-store lazily prepared `Question`s (the engine's layout), shared by all runs."""

    def __init__(self, data: ReplayData) -> None:
        self.data = data
        self._qs: list[Question | None] = [None] * data.num_questions

    def __getitem__(self, q: int) -> Question:
        item = self._qs[q]
        if item is None:
            item = self._qs[q] = Question(self.data, q)
        return item


def shown_answer(ans: Any) -> str:
    """A returned value for a message. Integers past int32 say so; a repr is never built for
    them, as Python refuses the decimal repr of an int of over 4300 digits."""
    if isinstance(ans, int | np.integer) and not isinstance(ans, bool):
        return f"a {int(ans).bit_length()}-bit integer (outside the int32 range of answer classes)"
    return f"{ans!r:.80}"


def controller_lines(exc: BaseException, path: str) -> str:
    import traceback  # here: only a failed episode needs it

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
    where = "; ".join(f"line {f.lineno}: {(f.line or '').strip()}" for f in frames[-3:])
    return f"{type(exc).__name__}: {exc}" + (f" (at {where})" if where else "")


def run_block(
    questions: Questions,
    spec: ctl.ControllerSpec,
    config: dict[str, Any],
    proto: EvalProtocol,
    draw_lo: int,
    draw_hi: int,
    *,
    store_name: str = "",
    on_error: str = "raise",
    trace: bool = False,
    deadline: Callable[[], None] | None = None,
    batch: bool = True,
) -> BlockResult:
    """Replay draws [draw_lo, draw_hi) × every question. With `batch` and a controller that defines
    run_batch, all of them run in lockstep through one `EpisodeBatch` (docs/batch.md); traces come
    from the per-episode path, whose results are the same (tests/test_batch.py)."""
    if batch and not trace and spec.batched:
        return run_block_batched(questions, spec, config, proto, draw_lo, draw_hi,
                                 store_name=store_name, on_error=on_error, deadline=deadline)
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
                kind, message, ans = "exception", controller_lines(e, spec.path), None
            ep.close()  # a handle kept past its episode must not read on for free
            if kind is None:
                if ans is None:
                    ans = NO_ANSWER
                elif (isinstance(ans, bool) or not isinstance(ans, int | np.integer)
                      or not -(2**31) <= ans < 2**31):
                    kind, message = "non_answer", f"run() returned {shown_answer(ans)}, not an answer class"
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
            # The controller answers in its episode's own ids; the store's class is what scores.
            answers[di, q] = store_class(ep, ans)
            tokens[di, q] = ep.tokens
            probes[di, q] = ep.num_probes
            opened[di, q] = ep.num_opened
            if traces is not None:
                traces.append({"question": q, "draw": draw, "events": ep.trace_events()})
        if deadline is not None:
            deadline()
    return BlockResult(answers, tokens, probes, opened, errors, traces)


def run_block_batched(
    questions: Questions,
    spec: ctl.ControllerSpec,
    config: dict[str, Any],
    proto: EvalProtocol,
    draw_lo: int,
    draw_hi: int,
    *,
    store_name: str = "",
    on_error: str = "raise",
    deadline: Callable[[], None] | None = None,
) -> BlockResult:
    """run_block through the controller's run_batch: the same results and the same error kinds
    (invalid_action, exception, non_answer) per episode, in the same order."""
    nq, nd = questions.data.num_questions, draw_hi - draw_lo
    qs, orders = [], []
    for di in range(nd):
        for q in range(nq):
            question = questions[q]
            qs.append(question)
            orders.append(draw_order(proto.protocol, draw_lo + di, q, question.num_branches,
                                     seed=proto.seed, n=proto.pool))
    eps = EpisodeBatch(qs, orders, probe_cost=proto.probe_cost, budget=proto.budget)
    size = eps.size
    failed: dict[int, tuple[str, str]] = {}
    got: Any = None
    try:
        got = spec.cls(**config).run_batch(eps)
    except InvalidAction as e:
        failed = dict.fromkeys(range(size), ("invalid_action", str(e)))
    except Exception as e:  # the controller's own bug: every episode of the batch reports it
        failed = dict.fromkeys(range(size), ("exception", controller_lines(e, spec.path)))
    eps.close()
    for e, message in eps.refusals().items():
        failed[e] = ("invalid_action", message)
    ans = np.full(size, NO_ANSWER, dtype=np.int64)
    if len(failed) < size:
        ans, bad = _batch_answers(got, size)
        for e, message in bad.items():
            failed.setdefault(e, ("non_answer", message))
    if failed:
        ans[list(failed)] = NO_ANSWER
    classes = eps.store_classes(ans)
    steps = eps.num_actions
    errors: list[dict[str, Any]] = []
    for e in sorted(failed):
        kind, message = failed[e]
        draw, q = draw_lo + e // nq, e % nq
        if on_error == "raise":
            raise EvaluationError(f"{spec.name} on {store_name}, question {q}, draw {draw}, step "
                                  f"{steps[e]}: {kind}: {message}")
        errors.append({"kind": kind, "store": store_name, "question": q, "draw": draw,
                       "step": int(steps[e]), "message": message})
    if deadline is not None:
        deadline()
    return BlockResult(
        classes.reshape(nd, nq),
        eps.tokens.reshape(nd, nq),
        eps.num_probes.astype(np.int32).reshape(nd, nq),
        eps.num_opened.astype(np.int32).reshape(nd, nq),
        errors,
        None,
    )


def _batch_answers(got: Any, size: int) -> tuple[np.ndarray, dict[int, str]]:
    """run_batch's answers as int64 ids, and the episodes whose entry is not an answer class
    (judged as run()'s return value is: None is no answer; bools, floats, past int32 are not)."""
    if isinstance(got, np.ndarray) and got.shape == (size,) and got.dtype.kind in "iu":
        ans = got.astype(np.int64)
        out = (ans < -(2**31)) | (ans >= 2**31)
        bad = {int(e): f"run_batch() returned {shown_answer(got[e])} for this episode, not an "
               "answer class" for e in np.flatnonzero(out)}
        return np.where(out, NO_ANSWER, ans), bad
    items = got.tolist() if isinstance(got, np.ndarray) and got.ndim == 1 else got
    if not isinstance(items, list | tuple) or len(items) != size:
        what = (f"an array of shape {got.shape}" if isinstance(got, np.ndarray)
                else shown_answer(got))
        message = f"run_batch() returned {what}, not one answer class per episode ({size})"
        return np.full(size, NO_ANSWER, dtype=np.int64), dict.fromkeys(range(size), message)
    ans = np.full(size, NO_ANSWER, dtype=np.int64)
    bad = {}
    for e, a in enumerate(items):
        if a is None:
            continue
        if isinstance(a, bool) or not isinstance(a, int | np.integer) or not -(2**31) <= a < 2**31:
            bad[e] = f"run_batch() returned {shown_answer(a)} for this episode, not an answer class"
        else:
            ans[e] = int(a)
    return ans, bad


@dataclass(frozen=True)
class Job:
    """Everything a worker needs besides the store data: one controller, its configurations."""

    controller_path: str
    controller_source: str
    configs: tuple[dict[str, Any], ...]
    proto: EvalProtocol
    store_names: tuple[str, ...]
    on_error: str = "raise"
    trace: bool = False
    batch: bool = True  # run_batch where the controller defines it (docs/batch.md)


# A work unit: (store index, configuration index, first draw, end draw).
Unit = tuple[int, int, int, int]


def make_units(n_stores: int, n_configs: int, draws: int, workers: int) -> list[Unit]:
    """Split store × configuration × draws into about 8 units per worker (for balance); each
    unit is a contiguous draw range, so results do not depend on the split. One worker needs no
    balance: a unit per store × configuration, the largest lockstep batch for run_batch."""
    per_sr = 1 if workers <= 1 else math.ceil(workers * 8 / (n_stores * n_configs))
    chunk = max(1, math.ceil(draws / per_sr))
    return [
        (s, r, lo, min(draws, lo + chunk))
        for s in range(n_stores)
        for r in range(n_configs)
        for lo in range(0, draws, chunk)
    ]


def run_unit(questions: Questions, job: Job, unit: Unit) -> BlockResult:
    s, r, lo, hi = unit
    spec = ctl.load_source(job.controller_source, job.controller_path)
    return run_block(
        questions, spec, job.configs[r], job.proto, lo, hi,
        store_name=job.store_names[s], on_error=job.on_error, trace=job.trace,
        batch=job.batch,
    )


def knob_key(config: dict[str, Any], nested_order: bool = True) -> str:
    """What makes two β's knobs the same configuration (run once, scored for both): their JSON,
    so that types count (1, 1.0 and True differ; so do 0.0 and -0.0), with the knobs sorted by
    name (they bind to the constructor by name: their order reaches no controller) but the keys
    of a dict-valued knob in their own order (a controller can read it: {"x": 1, "y": 2} and
    {"y": 2, "x": 1} are two configurations). `nested_order=False` sorts those too, for knobs
    read back from a record (fsio writes JSON with sorted keys). Values JSON cannot write are
    compared by their repr."""
    import json

    if not nested_order:
        return json.dumps(config, sort_keys=True, default=repr)
    return json.dumps(sorted(config.items()), default=repr)
