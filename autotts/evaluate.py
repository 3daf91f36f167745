"""Evaluation (DESIGN §6): run a controller over stores × β × draws and score it.

Running and scoring are separate on purpose. `autotts.units.run_block` replays episodes and returns
only what the controller answered and what it spent (a `BlockResult`); it never sees a gold
answer, so it runs in any worker, and the sandbox's judge returns the same `BlockResult` from the
episodes it serves. `evaluate` scores those answers against the gold classes it alone holds;
`autotts.executors` decides where the work units run.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autotts import controller as ctl
from autotts.errors import ConfigError
from autotts.executors import make_executor
from autotts.store import Store, open_store
from autotts.units import (  # noqa: F401  (EvalProtocol, EvaluationError: public here as before)
    BlockResult,
    EvalProtocol,
    EvaluationError,
    Job,
    knob_key,
    make_units,
)


def score(
    stores: Sequence[Store],
    spec_name: str,
    runs: Sequence[tuple[float | None, dict[str, Any]]],
    proto: EvalProtocol,
    results: dict[tuple[int, int], list[tuple[int, BlockResult]]],
    *,
    episodes: bool = False,
    traces: bool = False,
) -> Evaluation:
    """Score what the controller answered against the gold classes (held here, never by the
    engine) and aggregate over draws. results[(store, run)] = [(first draw, block), ...]."""
    rows: list[dict[str, Any]] = []
    ep_rows: list[dict[str, Any]] | None = [] if episodes else None
    all_traces: list[dict[str, Any]] | None = [] if traces else None
    all_errors: list[dict[str, Any]] = []
    outcomes: list[tuple[str, str, float | None, np.ndarray, np.ndarray]] = []
    for s, st in enumerate(stores):
        gold = st.gold_classes()
        for r, (beta, cfg) in enumerate(runs):
            parts = sorted(results[(s, r)], key=lambda x: x[0])
            ans = np.concatenate([p.answers for _, p in parts])
            tok = np.concatenate([p.tokens for _, p in parts])
            correct = (ans == gold[None, :]) & (ans >= 0)
            acc, acc_se = _mean_se(correct.mean(axis=1) * 100.0)
            tmean, tse = _mean_se(tok.mean(axis=1))
            outcomes.append((st.name, spec_name, beta, correct, tok))
            errs = [e for _, p in parts for e in p.errors]
            all_errors.extend(errs)
            rows.append(
                {
                    "store": st.name,
                    "controller": spec_name,
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
                # Python values per draw (one tolist per array, not a numpy scalar per cell:
                # 26,400 episodes in a discovery sweep).
                cols = zip(_int_rows(ans), correct.tolist(), _int_rows(tok),
                           _int_rows(probes), _int_rows(opened), strict=True)
                for d, (a_d, c_d, t_d, p_d, o_d) in enumerate(cols):
                    for q in range(ans.shape[1]):
                        ep_rows.append(
                            {
                                "store": st.name,
                                "controller": spec_name,
                                "beta": beta,
                                "draw": d,
                                "question": q,
                                "answer": a_d[q],
                                "correct": c_d[q],
                                "tokens": t_d[q],
                                "probes": p_d[q],
                                "opened": o_d[q],
                            }
                        )
            if all_traces is not None:
                for _, p in parts:
                    for t in p.traces or []:
                        all_traces.append({"store": st.name, "beta": beta, "config": cfg, **t})
    return Evaluation(rows, ep_rows, all_traces, all_errors, outcomes)


@dataclass
class Evaluation:
    """What `evaluate` returns: one row per store × β, and the episodes, traces and errors
    behind them."""

    rows: list[dict[str, Any]]
    episodes: list[dict[str, Any]] | None = None
    traces: list[dict[str, Any]] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    # Per row, in row order: (store, controller, β, correct [D, Q] bool, tokens [D, Q]), the
    # episodes' outcomes as arrays, kept whether or not `episodes` was asked for
    # (`stats.curves_from_outcomes` reads them without building a dict per episode).
    outcomes: list[tuple[str, str, float | None, np.ndarray, np.ndarray]] = field(
        default_factory=list)


def _int_rows(a: np.ndarray) -> list[list[int]]:
    """A [D, Q] array as rows of Python ints: tolist() where the dtype is an integer one (its
    values exactly), int() per value otherwise (as an episode row always converted them)."""
    if a.dtype.kind in "iu":
        return a.tolist()
    return [[int(x) for x in row] for row in a]


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
    proto: EvalProtocol | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    workers: int = 1,
    executor: str | Any = "local",
    ray_address: str | None = None,
    episodes: bool = False,
    traces: bool = False,
    on_error: str = "raise",
    progress: Callable[[int, int], None] | None = None,
    batch: bool = True,
    on_loaded: Callable[[], None] | None = None,
) -> Evaluation:
    """Evaluate one controller over stores × β (× the protocol's draws).

    betas=None (or [None]) runs the constructor defaults with `overrides` and reports beta as
    None. Results are identical for any number of workers and either executor ("local" processes
    or "ray"): every episode is deterministic and does not depend on which process runs it.
    batch=False runs every episode through the controller's run() even where it defines
    run_batch (whose results are the same; docs/batch.md). `on_loaded` is called once the
    controller and the stores are loaded, before any episode runs."""
    proto = proto or EvalProtocol()
    proto.check()
    if on_error not in ("raise", "record"):
        raise ConfigError(f"on_error must be 'raise' or 'record', got {on_error!r}")
    spec = controller if isinstance(controller, ctl.ControllerSpec) else ctl.load(controller)
    loaded = [_as_store(s) for s in stores]
    if not loaded:
        raise ConfigError("no store to evaluate on")
    if on_loaded is not None:
        on_loaded()
    runs: list[tuple[float | None, dict[str, Any]]] = []
    for beta in list(betas) if betas else [None]:
        runs.append((beta, spec.config(beta, overrides)))
    # β points whose schedule gives the same knobs (ESC's does) are run once: an episode's result
    # depends on the knobs only. The same knobs, types included (knob_key): 1, 1.0 and True are
    # equal to Python but not to a controller that tells them apart.
    configs: list[dict[str, Any]] = []
    keys: list[str] = []
    canonical = []
    for _, cfg in runs:
        key = knob_key(cfg)
        if key not in keys:
            configs.append(cfg)
            keys.append(key)
        canonical.append(keys.index(key))
    job = Job(
        controller_path=spec.path,
        controller_source=spec.source,
        configs=tuple(configs),
        proto=proto,
        store_names=tuple(s.name for s in loaded),
        on_error=on_error,
        trace=traces,
        batch=batch,
    )
    ex = make_executor(executor, workers=workers, address=ray_address)
    units = make_units(len(loaded), len(configs), proto.draws, ex.parallelism)
    done_by_config: dict[tuple[int, int], list[tuple[int, BlockResult]]] = {}
    for done, (unit, res) in enumerate(ex.run([s.replay() for s in loaded], job, units), 1):
        done_by_config.setdefault((unit[0], unit[1]), []).append((unit[2], res))
        if progress:
            progress(done, len(units))
    results = {(s, r): done_by_config[(s, canonical[r])]
               for s in range(len(loaded)) for r in range(len(runs))}
    return score(loaded, spec.name, runs, proto, results, episodes=episodes, traces=traces)


# Old names kept working for users' scripts, with a DeprecationWarning (old name: new name).
_RENAMED = {"Protocol": "EvalProtocol"}


def __getattr__(name: str) -> Any:
    new = _RENAMED.get(name)
    if new is None or new not in globals():
        raise AttributeError(f"module 'autotts.evaluate' has no attribute {name!r}")
    import warnings

    warnings.warn(f"autotts.evaluate.{name} is deprecated: use {new}", DeprecationWarning,
                  stacklevel=2)
    return globals()[new]


class _CallableModule(type(sys)):  # types.ModuleType
    """`autotts.evaluate` names both this module (Python binds a submodule on its package) and,
    in the public API, the function. Making the module callable lets both hold at once: the call
    looks `evaluate` up at call time, so a patched function is the one called."""

    def __call__(self, *args: Any, **kwargs: Any) -> Evaluation:
        return self.evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
