"""Evaluating controllers for the loop: trusted seeds in-process, agent-written candidates only
through the sandbox, and the objective both are ranked by.

A candidate goes admission → smoke run → full β sweep → traced draws; the first failure ends it
with a typed verdict (a dict: kind, stage, message, traceback, context). Stages:

  parse    the response holds no controller file, or more than the run asks for per round
           (kinds no_candidate, multiple_candidates)
  critic   the optional critic call rejected it (critic_rejected)
  admit    static admission by the sandbox (syntax, forbidden, interface)
  smoke    `smoke_questions` questions of the first search store × 3 β (lowest, middle, highest of
           the grid) × `smoke_draws` draws, stopping at the first failing episode: a broken
           candidate costs a fraction of a second instead of a sweep
  sweep    every search store × the β grid × the environment's draws (episode failures recorded,
           not raised, so the agent sees how often and where it fails), then measured
           β-monotonicity of cost
  traces   `trace_draws` draws of the same grid with execution traces, for the digest: traced
           within the sweep itself (its first draws; see Discovery._sweep)
  race     with racing on (race_draws), the sweep runs its first race_draws draws, then stops
           (kind stopped_early) when even an optimistic bound of the objective cannot reach the
           best so far (autotts/discover/race.py); a candidate not stopped runs the rest and
           gets exactly the numbers of one full sweep

The objective: for each search store, the area under the accuracy-vs-log10(tokens) curve over the
environment's token_range, divided by the range's width (so: the curve's mean accuracy in percent
over that log-token range; the curve is piecewise linear through the β points sorted by tokens and
flat beyond its ends), then the mean over search stores. Higher is better.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from typing import Protocol as TypingProtocol

import numpy as np
import pyarrow.compute as pc

from autotts.evaluate import EvalProtocol, Evaluation
from autotts.metrics import auc_log_tokens
from autotts.store import Store

OK = "ok"
STOPPED = "stopped_early"  # the race stopped it: partial figures, never eligible


def verdict(kind: str, stage: str, message: str, traceback: str | None = None,
            context: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"kind": kind, "stage": stage, "message": message, "traceback": traceback,
            "context": dict(context or {})}


def from_sandbox(v: Any, stage: str) -> dict[str, Any]:
    """A sandbox Verdict (object or dict) as the loop's verdict dict."""
    if isinstance(v, dict):
        d = v
    else:
        d = {"kind": getattr(v, "kind", "crash"), "message": getattr(v, "message", str(v)),
             "traceback": getattr(v, "traceback", None), "context": getattr(v, "context", {})}
    ctx = d.get("context") if isinstance(d.get("context"), dict) else {}
    return verdict(str(d.get("kind", "crash")), stage, str(d.get("message", ""))[:2000],
                   None if d.get("traceback") is None else str(d["traceback"])[:4000],
                   {k: v for k, v in ctx.items() if isinstance(v, str | int | float | bool)
                    or v is None})


# ---- the sandbox, behind a small interface ------------------------------------------------------


class CandidateFailure(Exception):
    def __init__(self, v: dict[str, Any]) -> None:
        super().__init__(v["message"])
        self.verdict = v


class Backend(TypingProtocol):
    """How the loop runs untrusted code. The real one is the sandbox; unit tests that do not
    exercise security may pass a stand-in."""

    def admit(self, source: str, filename: str) -> dict[str, Any] | None: ...

    def evaluate(self, path: str, stores: Sequence[Any], betas: Sequence[float],
                 proto: EvalProtocol, *, stage: str, episodes: bool = False, traces: bool = False,
                 trace_draws: int | None = None, on_error: str = "raise",
                 workers: int = 1, draws: tuple[int, int] | None = None,
                 deadline: float | None = None) -> Evaluation: ...

    def merge(self, stages: Sequence[Evaluation], stores: Sequence[Any],
              betas: Sequence[float], proto: EvalProtocol, *, stage: str,
              episodes: bool = False, traces: bool = False) -> Evaluation: ...

    def monotonicity(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None: ...


class SandboxBackend:
    """Candidates in sandbox processes: on this machine, or with a Ray executor on the cluster's
    workers (each starts its own sandbox processes). The smoke stage always runs here: it is a
    fraction of a second, less than a round trip to a cluster."""

    def __init__(self, limits: dict[str, Any] | None = None, executor: Any = None,
                 allow_weak_sandbox: bool = False) -> None:
        from autotts import sandbox  # the loop never runs a candidate without it

        self.sb = sandbox
        self.limits = sandbox.SandboxLimits(**limits) if limits else None
        self.executor = executor
        self.weak = {"allow_weak_sandbox": True} if allow_weak_sandbox else {}  # default: refuse
        self.isolation: dict[str, Any] = {}  # what applied in the latest evaluation

    def admit(self, source: str, filename: str) -> dict[str, Any] | None:
        v = self.sb.admit(source, filename)
        return None if v is None else from_sandbox(v, "admit")

    def evaluate(self, path: str, stores: Sequence[Any], betas: Sequence[float],
                 proto: EvalProtocol, *, stage: str, episodes: bool = False, traces: bool = False,
                 trace_draws: int | None = None, on_error: str = "raise",
                 workers: int = 1, draws: tuple[int, int] | None = None,
                 deadline: float | None = None) -> Evaluation:
        """`draws=(lo, hi)`: a stage of a staged evaluation (evaluate_sandboxed), to be joined
        by `merge`; `deadline`: the first stage's, so that the wall-clock limit holds for all."""
        try:
            ev = self.sb.evaluate_sandboxed(
                path, list(stores), list(betas), proto, episodes=episodes, traces=traces,
                trace_draws=trace_draws, on_error=on_error, limits=self.limits, workers=workers,
                executor=None if stage == "smoke" else self.executor, draws=draws,
                deadline=deadline, **self.weak,
            )
        except self.sb.SandboxError as e:
            raise CandidateFailure(from_sandbox(e.verdict, stage)) from None
        self.isolation = dict(getattr(ev, "isolation", None) or {})
        return ev

    def start(self, path: str, stores: Sequence[Any], betas: Sequence[float],
              proto: EvalProtocol, *, stage: str, **kw: Any) -> PendingCandidate | None:
        """`evaluate` with the same arguments (not the smoke's), its sandbox processes started
        now (sandbox.start_sandboxed): `result()` returns or raises what `evaluate` would have
        then, `cancel()` calls it off. None where `evaluate` is not this class's own (a
        subclass's or a patched one, which a start ahead would bypass)."""
        starter = getattr(self.sb, "start_sandboxed", None)
        if starter is None or getattr(self.evaluate, "__func__", None) is not \
                SandboxBackend.evaluate:
            return None
        pending = starter(
            path, list(stores), list(betas), proto, limits=self.limits,
            executor=None if stage == "smoke" else self.executor, **kw, **self.weak)
        return PendingCandidate(self, pending, stage)

    def merge(self, stages: Sequence[Evaluation], stores: Sequence[Any],
              betas: Sequence[float], proto: EvalProtocol, *, stage: str,
              episodes: bool = False, traces: bool = False) -> Evaluation:
        """The stages of a staged evaluation as the one evaluation they make up."""
        from autotts.sandbox.evaluation import merge_stages

        try:
            return merge_stages(list(stages), list(stores), list(betas), proto,  # type: ignore[arg-type]
                                episodes=episodes, traces=traces)
        except self.sb.SandboxError as e:
            raise CandidateFailure(from_sandbox(e.verdict, stage)) from None

    def monotonicity(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
        v = self.sb.monotonicity(list(rows))
        return None if v is None else from_sandbox(v, "sweep")


class PendingCandidate:
    """A SandboxBackend evaluation started ahead (SandboxBackend.start)."""

    def __init__(self, backend: SandboxBackend, pending: Any, stage: str) -> None:
        self.backend, self.pending, self.stage = backend, pending, stage

    def result(self) -> Evaluation:
        try:
            ev: Evaluation = self.pending.result()
        except self.backend.sb.SandboxError as e:
            raise CandidateFailure(from_sandbox(e.verdict, self.stage)) from None
        self.backend.isolation = dict(getattr(ev, "isolation", None) or {})
        return ev

    def cancel(self) -> None:
        self.pending.cancel()


# ---- parsing the agent's response -----------------------------------------------------------

_FENCE = re.compile(r"^```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)


def extract_candidates(text: str | None, limit: int = 1
                       ) -> tuple[list[str], dict[str, Any] | None]:
    """The controller files of a response, at most `limit`: (sources, None), or ([], verdict).
    A fenced block counts as a controller file when it is tagged python (or untagged) and
    defines a class. More files than asked for is an error, not a choice made for the agent."""
    if text is None or not text.strip():
        return [], verdict("no_candidate", "parse", "the response had no message text")
    ask = ("exactly one complete controller file in a single ```python block" if limit == 1 else
           f"1 to {limit} complete controller files, each in its own ```python block")
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    files = [b for lang, b in blocks if lang in ("python", "py", "python3", "")
             and re.search(r"^\s*class\s+\w+", b, re.M)]
    if not files:
        what = ("no fenced code block" if not blocks else
                f"{len(blocks)} code block(s), none a Python file defining a class")
        return [], verdict("no_candidate", "parse", f"the response contains {what}; send {ask}")
    if len(files) > limit:
        return [], verdict(
            "multiple_candidates", "parse",
            f"the response contains {len(files)} Python blocks defining classes; send {ask} "
            "per round")
    return [f.rstrip() + "\n" for f in files], None


def extract_candidate(text: str | None) -> tuple[str | None, dict[str, Any] | None]:
    """The one controller file of a response: (source, None), or (None, verdict)."""
    files, v = extract_candidates(text, 1)
    return (files[0] if files else None), v


def controller_name(source: str) -> str | None:
    m = re.search(r"^\s+NAME\s*(?::\s*str\s*)?=\s*['\"]([^'\"\n]{1,64})['\"]", source, re.M)
    return m.group(1) if m else None


# ---- objective ----------------------------------------------------------------------------------


def objective(rows: Sequence[dict[str, Any]], stores: Sequence[str],
              token_range: tuple[float, float]) -> tuple[float | None, dict[str, float]]:
    """(mean over stores, per store) of the normalized AUC (module docstring). None when a store
    has no finite point."""
    per: dict[str, float] = {}
    for s in stores:
        pts = [(float(r["tokens"]), float(r["accuracy"])) for r in rows
               if r["store"] == s and r.get("beta") is not None]
        pts = [(t, a) for t, a in pts if np.isfinite(t) and np.isfinite(a) and t > 0]
        if not pts:
            return None, per
        t, a = zip(*pts, strict=True)
        per[s] = round(auc_log_tokens(t, a, *token_range), 6)
    return (round(float(np.mean(list(per.values()))), 6) if per else None), per


# ---- the smoke store ----------------------------------------------------------------------------


def subset_store(store: Store, n: int) -> Store:
    """The first n questions of a store, as a store of its own."""
    n = min(n, store.num_questions)
    keep_q = pc.less(store.questions.column("question_idx"), n)
    keep_b = pc.less(store.branches.column("question_idx"), n)
    keep_a = pc.less(store.answers.column("question_idx"), n)
    manifest = {k: v for k, v in store.manifest.items() if k != "content_hash"}
    manifest["name"] = f"{store.name}[smoke]"
    return Store(manifest, store.questions.filter(keep_q), store.branches.filter(keep_b),
                 store.answers.filter(keep_a))


def smoke_betas(betas: Sequence[float]) -> list[float]:
    b = sorted(set(betas))
    return sorted({b[0], b[len(b) // 2], b[-1]})


def first_error_verdict(errors: Sequence[dict[str, Any]], n_episodes: int) -> dict[str, Any]:
    e = errors[0]
    kinds = sorted({x.get("kind", "exception") for x in errors})
    ctx = {k: e.get(k) for k in ("store", "question", "draw", "step", "beta") if k in e}
    return verdict(
        str(e.get("kind", "exception")), "sweep",
        f"{len(errors)} of {n_episodes} episodes failed ({', '.join(kinds)}); first: "
        f"{e.get('message', '')}"[:2000],
        e.get("traceback"), ctx,
    )
