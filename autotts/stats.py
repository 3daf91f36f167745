"""Paired uncertainty over questions (issue 15): bootstrap intervals for accuracy, tokens, the AUC
objective and differences between controllers, from the per-episode outcomes evaluation records.

Why questions: a store holds a fixed, small set of questions (30 for AIME), and *which* questions
were asked dominates the noise of every figure (a binomial sd of about 7 points at 80% accuracy).
The draw-level standard error that `eval` prints (over shuffle draws, the published protocol) says
how well the replay estimated the controller's accuracy *on these questions*; the intervals here
say how far the figure could move on another set of questions from the same source.

The resampling scheme (a two-stage, "cluster" bootstrap):

* Unit: the question. One resample draws Q questions with replacement (a multinomial count per
  question). Draws are nested inside questions and are *all kept*: each question enters with its
  mean over the draws evaluation ran. Resampling the draws as well would add the replay's Monte
  Carlo noise a second time (it is already inside each question's mean), which makes two-stage
  bootstraps conservative (Davison & Hinkley 1997, §2.4); with 20-100 draws per question that
  noise is small beside the question-to-question spread.
* Paired: the resamples of a store depend only on (seed, store name, number of questions), so
  every controller compared on a store sees the same resampled question sets — even when their
  intervals are computed in separate calls. A difference is computed within each resample, so the
  questions both controllers find easy or hard cancel out.
* Stratified: pooled figures (the mean over stores, as discovery's objective) resample each store's
  questions separately (each store keeps its own size) and average per resample, except
* clustered: stores that hold the same questions (every model's replay of one benchmark;
  `question_clusters`, passed as `clusters`) are resampled together, question i of each in the
  same resample. A figure pooled over them rests on one sample of questions; resampled apart,
  question effects shared across the models average away and the interval is too narrow (77%
  coverage for a nominal 95% in tests/test_stats.py's simulation).
* Deterministic: the same inputs and seed give the same intervals, bit for bit.

Method: BCa by default (bias-corrected and accelerated, Efron 1987), percentile on request. The
AUC is a non-linear statistic of bounded accuracies (sorted, interpolated, clipped to a token
range) and its bootstrap distribution is often skewed at 30 questions; BCa corrects for the median
bias and the skew (second-order accurate: the error of each end's coverage is O(1/n) against
O(1/sqrt(n)) for percentile). Its acceleration comes from a jackknife over questions, which here
costs one more weight matrix of Q rows, so BCa is as fast as percentile. The coverage simulations in tests/test_stats.py measure
both (docs/comparisons.md has the figures). BCa falls back to the percentile interval where it is
undefined (every resample on one side of the estimate) and gives the point itself when every
resample equals it (identical controllers: ΔAUC = 0, interval [0, 0]).

The AUC is the environment's objective exactly (autotts.discover.candidates.objective): per store,
`metrics.auc_log_tokens` of (mean tokens, accuracy %) at each β over the environment's token_range,
then the mean over stores. `metrics.auc_log_tokens_batch` is its vectorized form; the point
estimates here equal what discovery prints.

"Probability of improvement" is the bootstrap share of resamples in which A beats B (ties count
half): a summary of the same resampling distribution as the interval, not a posterior. Each
difference's p-value (`_p_value`) inverts its interval, for Holm's correction (`holm`) where many
comparisons are shown at once. A store of one question has no interval (`NO_INTERVAL`).

Inputs: `Curve`s, built by `curves_from_episodes` (rows of evaluate(..., episodes=True) or of
`eval --episodes FILE`), `curves_from_rows` (`eval --json FILE --json-episodes` rows, which embed
their episodes) or `load_curves` (either file).
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from operator import itemgetter
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from autotts.errors import ConfigError

DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95
DEFAULT_METHOD = "bca"
METHODS = ("bca", "percentile")
# The objective's token range when no environment gives one (EnvDef's default).
DEFAULT_TOKEN_RANGE: tuple[float, float] = (5e4, 1.5e6)

_NORMAL = NormalDist()


# ---- inputs -------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Curve:
    """One controller on one store: per-question outcomes at each β, each the mean over draws.

    accuracy[b, q] is question q's accuracy at betas[b] in percent (100 × the share of draws
    answered correctly), tokens[b, q] its mean tokens. The row figures of `eval` are the means over
    questions: `point_accuracy()` and `point_tokens()`."""

    store: str
    controller: str
    betas: tuple[float | None, ...]
    accuracy: np.ndarray  # float64 [B, Q], percent
    tokens: np.ndarray  # float64 [B, Q]
    draws: tuple[int, ...]  # draws per β

    @property
    def num_questions(self) -> int:
        return int(self.accuracy.shape[1])

    def point_accuracy(self) -> np.ndarray:
        return self.accuracy.mean(axis=1)

    def point_tokens(self) -> np.ndarray:
        return self.tokens.mean(axis=1)


def _beta_sort_key(b: float | None) -> tuple[int, float]:
    return (1, 0.0) if b is None else (0, float(b))


def _make_curve(store: str, controller: str, cells: dict[Any, tuple[np.ndarray, np.ndarray, int]],
                where: str) -> Curve:
    betas = sorted(cells, key=_beta_sort_key)
    qs = {cells[b][0].shape[0] for b in betas}
    if len(qs) != 1:
        raise ConfigError(f"{where}: {controller} on {store} has a different number of questions "
                          f"at different β ({sorted(qs)})")
    acc = np.stack([cells[b][0] for b in betas]).astype(np.float64)
    tok = np.stack([cells[b][1] for b in betas]).astype(np.float64)
    return Curve(store, controller, tuple(None if b is None else float(b) for b in betas), acc,
                 tok, tuple(int(cells[b][2]) for b in betas))


_EPISODE_KEY = itemgetter("store", "controller", "beta")
_QUESTION, _CORRECT, _TOKENS = itemgetter("question"), itemgetter("correct"), itemgetter("tokens")


def curves_from_episodes(episodes: Iterable[Mapping[str, Any]], *,
                         where: str = "episodes") -> dict[tuple[str, str], Curve]:
    """Curves keyed by (store, controller) from per-episode rows (store, controller, beta, draw,
    question, correct, tokens), as evaluate(..., episodes=True) returns and `eval --episodes`
    writes. Every (store, controller, β) must have the same draws for every question."""
    eps = episodes if isinstance(episodes, list) else list(episodes)
    if not eps:
        raise ConfigError(f"{where}: no episodes")
    try:
        n_eps = len(eps)
        try:  # C-level passes over the rows (every episode row has a controller)
            keys = list(map(_EPISODE_KEY, eps))
        except KeyError:  # rows without one: the slower way
            keys = [(e["store"], e.get("controller", ""), e.get("beta")) for e in eps]
        index: dict[Any, int] = {k: i for i, k in enumerate(dict.fromkeys(keys))}
        gid = np.fromiter(map(index.__getitem__, keys), dtype=np.int64, count=n_eps)
        q = np.fromiter(map(_QUESTION, eps), dtype=np.int64, count=n_eps)
        correct = np.fromiter(map(_CORRECT, eps), dtype=bool, count=n_eps).astype(np.float64)
        tokens = np.fromiter(map(_TOKENS, eps), dtype=np.float64, count=n_eps)
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{where}: not episode rows (store, controller, beta, question, "
                          f"correct, tokens): {e}") from None
    if q.min() < 0:
        raise ConfigError(f"{where}: negative question index")
    nq_all = int(q.max()) + 1
    flat = gid * nq_all + q
    size = len(index) * nq_all
    n = np.bincount(flat, minlength=size).reshape(len(index), nq_all)
    c = np.bincount(flat, weights=correct, minlength=size).reshape(len(index), nq_all)
    t = np.bincount(flat, weights=tokens, minlength=size).reshape(len(index), nq_all)
    cells: dict[tuple[str, str], dict[Any, tuple[np.ndarray, np.ndarray, int]]] = {}
    for (store, controller, beta), g in index.items():
        store, controller = str(store), str(controller)
        counts = n[g]
        nq = int(np.flatnonzero(counts).max()) + 1
        counts = counts[:nq]
        if counts.min() != counts.max():
            raise ConfigError(
                f"{where}: {controller} on {store} at β={beta}: questions have different numbers "
                f"of draws ({int(counts.min())}..{int(counts.max())})")
        cells.setdefault((store, controller), {})[beta] = (
            c[g, :nq] / counts * 100.0, t[g, :nq] / counts, int(counts[0]))
    return {k: _make_curve(k[0], k[1], v, where) for k, v in cells.items()}


def curves_from_outcomes(
        outcomes: Iterable[tuple[str, str, float | None, np.ndarray, np.ndarray]], *,
        where: str = "episodes") -> dict[tuple[str, str], Curve]:
    """The curves `curves_from_episodes` builds from the episode rows of these outcomes, without
    the rows: each item is (store, controller, β, correct [D, Q] bool, tokens [D, Q]), draw d of
    question q being one episode (`Evaluation.outcomes`). Items with the same (store, controller,
    β) pool their draws, as their rows would. Bit-identical to the rows' way: every per-question
    sum is a sum of integers, exact in float64 in any order."""
    sums: dict[Any, list[np.ndarray]] = {}  # key -> [draws, correct, tokens] per question
    for store, controller, beta, correct, tokens in outcomes:
        d, nq = correct.shape
        key = (store, controller, beta)
        acc = sums.get(key)
        if acc is None:
            acc = sums[key] = [np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)]
        if nq > len(acc[0]):  # a question only some items have: counted where it shows
            acc[:] = [np.concatenate([a, np.zeros(nq - len(a), np.int64)]) for a in acc]
        acc[0][:nq] += d
        acc[1][:nq] += np.count_nonzero(correct, axis=0)
        acc[2][:nq] += tokens.sum(axis=0, dtype=np.int64)
    if not sums:
        raise ConfigError(f"{where}: no episodes")
    cells: dict[tuple[str, str], dict[Any, tuple[np.ndarray, np.ndarray, int]]] = {}
    for (store, controller, beta), (counts, c, t) in sums.items():
        store, controller = str(store), str(controller)
        if counts.min() != counts.max():
            raise ConfigError(
                f"{where}: {controller} on {store} at β={beta}: questions have different numbers "
                f"of draws ({int(counts.min())}..{int(counts.max())})")
        cells.setdefault((store, controller), {})[beta] = (
            c.astype(np.float64) / counts * 100.0, t.astype(np.float64) / counts, int(counts[0]))
    return {k: _make_curve(k[0], k[1], v, where) for k, v in cells.items()}


def episodes_payload(episodes: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, Any], dict[str, Any]]:
    """The compact form `eval --json --json-episodes` embeds in each result row: per (store,
    controller, β), {"draws": D, "questions": Q, "correct": D lists of Q 0/1, "tokens": D lists of
    Q ints}, draw-major (every episode, nothing averaged)."""
    out: dict[tuple[str, str, Any], dict[str, Any]] = {}
    groups: dict[tuple[str, str, Any], list[Mapping[str, Any]]] = {}
    for e in episodes:
        groups.setdefault((str(e["store"]), str(e.get("controller", "")), e.get("beta")),
                          []).append(e)
    for key, items in groups.items():
        d = max(int(e["draw"]) for e in items) + 1
        nq = max(int(e["question"]) for e in items) + 1
        corr = np.zeros((d, nq), dtype=np.int64)
        tok = np.zeros((d, nq), dtype=np.int64)
        for e in items:
            corr[int(e["draw"]), int(e["question"])] = int(bool(e["correct"]))
            tok[int(e["draw"]), int(e["question"])] = int(e["tokens"])
        out[key] = {"draws": d, "questions": nq, "correct": corr.tolist(), "tokens": tok.tolist()}
    return out


def curves_from_rows(rows: Sequence[Mapping[str, Any]], *,
                     where: str = "rows") -> dict[tuple[str, str], Curve]:
    """Curves from result rows that embed their episodes (`eval --json FILE --json-episodes`)."""
    cells: dict[tuple[str, str], dict[Any, tuple[np.ndarray, np.ndarray, int]]] = {}
    for i, r in enumerate(rows):
        ep = r.get("episodes")
        if not isinstance(ep, dict):
            raise ConfigError(f"{where}: row {i} carries no episodes (write it with "
                              f"`autotts eval --json FILE --json-episodes`)")
        try:
            corr = np.asarray(ep["correct"], dtype=np.float64)
            tok = np.asarray(ep["tokens"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{where}: row {i}: malformed episodes ({e})") from None
        if corr.ndim != 2 or corr.shape != tok.shape or corr.size == 0:
            raise ConfigError(f"{where}: row {i}: episodes must be draws × questions matrices")
        key = (str(r["store"]), str(r.get("controller", "")))
        beta = r.get("beta")
        if beta in cells.get(key, {}):
            raise ConfigError(f"{where}: {key[1]} on {key[0]} at β={beta} appears twice")
        cells.setdefault(key, {})[beta] = (corr.mean(axis=0) * 100.0, tok.mean(axis=0),
                                           corr.shape[0])
    if not cells:
        raise ConfigError(f"{where}: no result rows")
    return {k: _make_curve(k[0], k[1], v, where) for k, v in cells.items()}


def load_curves(path: str | Path) -> dict[tuple[str, str], Curve]:
    """Curves from an `eval --json --json-episodes` file (.json) or an `eval --episodes` file
    (.jsonl)."""
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read: {e}") from None
    try:
        if p.suffix == ".jsonl":
            return curves_from_episodes(
                [json.loads(line) for line in text.splitlines() if line.strip()], where=str(p))
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}: not valid JSON: {e}") from None
    if isinstance(data, dict) and "rows" in data:
        data = data["rows"]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ConfigError(f"{p}: expected a JSON list of result rows")
    return curves_from_rows(data, where=str(p))


# ---- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap interval (over questions)."""

    estimate: float
    low: float
    high: float
    level: float = DEFAULT_LEVEL
    method: str = DEFAULT_METHOD

    @property
    def defined(self) -> bool:
        """False where there is no interval: fewer than two questions to resample (its bounds
        are NaN, written as null)."""
        return not (math.isnan(self.low) or math.isnan(self.high))

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    def bracket(self, fmt: str = ".2f") -> str:
        """`[low, high]`; `[no interval: < 2 questions]` where there is none."""
        if not self.defined:
            return NO_INTERVAL
        return f"[{self.low:{fmt}}, {self.high:{fmt}}]"

    def as_dict(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "low": _or_none(self.low),
                "high": _or_none(self.high), "level": self.level, "method": self.method}


# What an interval over questions reads where a store has a single question: resampling one
# question gives the same figure every time, a zero-width interval that would pass for certainty.
NO_INTERVAL = "[no interval: < 2 questions]"


def _or_none(x: float) -> float | None:
    return None if math.isnan(x) else x


def _undefined(est: float, level: float, method: str) -> Interval:
    return Interval(est, math.nan, math.nan, level, method)


@dataclass(frozen=True)
class Difference(Interval):
    """A paired difference A − B (higher is better for A) with its interval and the bootstrap
    probability that A is better."""

    prob_improvement: float = 0.5
    # Two-sided bootstrap p-value of "no difference", from the same resamples and method as the
    # interval (`_p_value`): below 1 − level where the interval excludes 0, up to the resamples'
    # resolution. For a correction over many comparisons (`holm`); NaN where there is no interval.
    p_value: float = math.nan

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (never where there is no interval)."""
        return self.defined and (self.low > 0 or self.high < 0)

    def verdict(self) -> str:
        """'better', 'worse' or 'within noise'; 'no interval' where there is none."""
        if not self.defined:
            return "no interval"
        if not self.significant:
            return "within noise"
        return "better" if self.low > 0 else "worse"

    def prob_text(self) -> str:
        """P(improvement) as printed: two decimals, '–' where there is no interval."""
        return "–" if math.isnan(self.prob_improvement) else f"{self.prob_improvement:.2f}"

    def describe(self, fmt: str = "+.2f") -> str:
        return (f"{self.estimate:{fmt}} {self.bracket(fmt)} ({self.level:.0%}), "
                f"P(improvement) {self.prob_text()}: {self.verdict()}")

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "prob_improvement": _or_none(self.prob_improvement),
                "significant": self.significant, "p_value": _or_none(self.p_value)}


@dataclass(frozen=True)
class Comparison:
    """ΔAUC = AUC(a) − AUC(b) per store and pooled (the mean over stores, stratified)."""

    a: str
    b: str
    stores: dict[str, Difference]
    pooled: Difference
    auc_a: dict[str, Interval] = field(default_factory=dict)
    auc_b: dict[str, Interval] = field(default_factory=dict)
    pooled_a: Interval | None = None
    pooled_b: Interval | None = None
    token_range: tuple[float, float] = DEFAULT_TOKEN_RANGE

    def as_dict(self) -> dict[str, Any]:
        return {
            "a": self.a, "b": self.b, "token_range": list(self.token_range),
            "stores": {s: d.as_dict() for s, d in self.stores.items()},
            "pooled": self.pooled.as_dict(),
            "auc_a": {s: i.as_dict() for s, i in self.auc_a.items()},
            "auc_b": {s: i.as_dict() for s, i in self.auc_b.items()},
            "pooled_a": None if self.pooled_a is None else self.pooled_a.as_dict(),
            "pooled_b": None if self.pooled_b is None else self.pooled_b.as_dict(),
        }


# ---- the resamples ------------------------------------------------------------------------------


@lru_cache(maxsize=32)  # 2000 × 30 weights are 480 kB: a few stores' worth, not a leak
def _weights(store: str, n: int, resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(store.encode("utf-8")), n, resamples])
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64) / n
    w.flags.writeable = False
    return w


def question_weights(store: str, n_questions: int, resamples: int = DEFAULT_RESAMPLES,
                     seed: int = 0) -> np.ndarray:
    """The bootstrap resamples of a store's questions as weights: float [resamples, Q], row r
    holding how often each question was drawn in resample r, divided by Q (so a row sums to 1 and
    `weights @ per_question` is the resampled mean). Depends only on the arguments, so every
    controller compared on a store gets the same resamples (read-only, cached)."""
    if n_questions < 1:
        raise ConfigError(f"{store}: no questions to resample")
    if resamples < 1:
        raise ConfigError(f"resamples must be at least 1, got {resamples}")
    return _weights(store, int(n_questions), int(resamples), int(seed))


@lru_cache(maxsize=64)
def _jackknife(n: int) -> np.ndarray:
    """Leave-one-question-out weights [Q, Q] (row i drops question i)."""
    if n < 2:
        return np.full((1, 1), 1.0)
    w = (1.0 - np.eye(n)) / (n - 1)
    w.flags.writeable = False
    return w


def check_method(method: str, level: float) -> None:
    """Refuse (ConfigError) an unknown interval method or a level outside (0, 1)."""
    if method not in METHODS:
        raise ConfigError(f"unknown interval method {method!r} (expected bca or percentile)")
    if not 0 < level < 1:
        raise ConfigError(f"confidence level must be in (0, 1), got {level}")


def _interval(est: float, boot: np.ndarray, jack: np.ndarray | None, level: float,
              method: str) -> tuple[float, float]:
    """Percentile or BCa interval of the bootstrap values `boot` around `est`; `jack` are the
    leave-one-question-out values (for BCa's acceleration)."""
    boot = np.asarray(boot, dtype=np.float64)
    alpha = (1.0 - level) / 2.0
    span = float(boot.max() - boot.min()) if boot.size else 0.0
    if span <= 1e-12 * max(1.0, abs(est)):
        # Every resample gives the same value (identical controllers, a constant outcome).
        lo = min(est, float(boot.min()))
        hi = max(est, float(boot.max()))
        return lo, hi
    probs = np.array([alpha, 1.0 - alpha])
    if method == "bca" and jack is not None and jack.size > 1:
        below = float(np.mean(boot < est) + 0.5 * np.mean(boot == est))
        if 0.0 < below < 1.0:
            z0 = _NORMAL.inv_cdf(below)
            d = jack.mean() - jack
            den = float((d**2).sum())
            acc = float((d**3).sum() / (6.0 * den**1.5)) if den > 0 else 0.0
            adj = []
            for p in probs:
                z = z0 + _NORMAL.inv_cdf(float(p))
                denom = 1.0 - acc * z
                adj.append(_NORMAL.cdf(z0 + z / denom) if denom > 0 else float(p))
            probs = np.clip(np.array(adj), 0.0, 1.0)
    lo, hi = np.quantile(boot, probs)
    return float(lo), float(hi)


def _intervals(est: np.ndarray, boot: np.ndarray, jack: np.ndarray, level: float,
               method: str) -> tuple[np.ndarray, np.ndarray]:
    """`_interval` for K statistics at once: est [K], boot [R, K], jack [J, K] -> (low [K],
    high [K]); the same numbers, with one sort instead of K quantile calls."""
    est = np.asarray(est, dtype=np.float64)
    r, k = boot.shape
    alpha = (1.0 - level) / 2.0
    probs = np.tile(np.array([alpha, 1.0 - alpha]), (k, 1))  # [K, 2]
    if method == "bca" and jack.shape[0] > 1:
        below = np.mean(boot < est, axis=0) + 0.5 * np.mean(boot == est, axis=0)
        d = jack.mean(axis=0) - jack
        den = (d**2).sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            acc = np.where(den > 0, (d**3).sum(axis=0) / (6.0 * den**1.5), 0.0)
        for i in np.flatnonzero((below > 0) & (below < 1)):
            z0 = _NORMAL.inv_cdf(float(below[i]))
            for j in (0, 1):
                p = float(probs[i, j])
                z = z0 + _NORMAL.inv_cdf(p)
                denom = 1.0 - float(acc[i]) * z
                probs[i, j] = min(1.0, max(0.0, _NORMAL.cdf(z0 + z / denom))) if denom > 0 else p
    # numpy's default ("linear") quantile on the sorted columns
    srt = np.sort(boot, axis=0)
    pos = probs * (r - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, r - 1)
    frac = pos - i0
    cols = np.arange(k)[:, None]
    q = srt[i0, cols] + (srt[i1, cols] - srt[i0, cols]) * frac  # [K, 2]
    lo, hi = q[:, 0], q[:, 1]
    span = srt[-1] - srt[0]
    flat = span <= 1e-12 * np.maximum(1.0, np.abs(est))
    lo = np.where(flat, np.minimum(est, srt[0]), lo)
    hi = np.where(flat, np.maximum(est, srt[-1]), hi)
    return lo, hi


def _p_value(est: float, boot: np.ndarray, jack: np.ndarray | None, method: str) -> float:
    """Two-sided p-value of "the difference is 0" that matches the interval: 1 − the largest
    level at which `_interval` (same resamples, same method) excludes 0, found by bisection (the
    interval widens with the level). So p < 1 − level exactly where the printed interval excludes
    0, up to the bisection's 1e-6. The smallest p-value is about 1/resamples, the resolution of
    the resamples: beyond it the interval's ends are the extreme resamples."""
    boot = np.asarray(boot, dtype=np.float64)
    span = float(boot.max() - boot.min())
    if span <= 1e-12 * max(1.0, abs(est)):  # every resample the same: 0 or not, for sure
        return 1.0 if boot[0] == 0 and est == 0 else 0.0

    def excludes(level: float) -> bool:
        lo, hi = _interval(est, boot, jack, level, method)
        return lo > 0 or hi < 0

    floor = 1.0 / boot.size
    if excludes(1.0 - floor):
        return floor
    if not excludes(1e-6):
        return 1.0
    ok, bad = 1e-6, 1.0 - floor  # excludes 0 at `ok`, not at `bad`
    while bad - ok > 1e-6:
        mid = (ok + bad) / 2
        ok, bad = (mid, bad) if excludes(mid) else (ok, mid)
    return 1.0 - ok


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of p-values for a family of comparisons shown together: the
    family-wise error rate (the chance of any false "significant") stays at most α when each is
    called significant at adjusted p < α, whatever the dependence between them. NaN entries (no
    interval) are left out of the family and stay NaN."""
    idx = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    m = len(idx)
    out = [math.nan] * len(p_values)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


def _prob_improvement(boot: np.ndarray) -> float:
    return float(np.mean(boot > 0) + 0.5 * np.mean(boot == 0))


def _wmean(w: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Weighted means over questions: w [K, Q] with m [B, Q] -> [K, B]. einsum, not `w @ m.T`:
    a BLAS call on matrices this small is slower, and much slower on a busy machine, where a
    threaded BLAS spins for cores."""
    return np.einsum("kq,bq->kb", w, m)


def _curve_auc(curve: Curve, w: np.ndarray, token_range: tuple[float, float]) -> np.ndarray:
    """The AUC of the curve under each row of question weights w [K, Q]."""
    if any(b is None for b in curve.betas):
        keep = [i for i, b in enumerate(curve.betas) if b is not None]
        if not keep:
            raise ConfigError(f"{curve.controller} on {curve.store}: no β points for an AUC")
        acc, tok = curve.accuracy[keep], curve.tokens[keep]
    else:
        acc, tok = curve.accuracy, curve.tokens
    # Imported here (and below): `eval`'s intervals need no AUC, nor autotts.metrics' import.
    from autotts.metrics import auc_log_tokens_batch

    return auc_log_tokens_batch(_wmean(w, tok), _wmean(w, acc), *token_range)


def _uniform(n: int) -> np.ndarray:
    return np.full((1, n), 1.0 / n)


def check_range(token_range: Sequence[float]) -> tuple[float, float]:
    """(low, high) of a token range, refused (ConfigError) unless 0 < low < high."""
    lo, hi = (float(x) for x in token_range)
    if not (0 < lo < hi):
        raise ConfigError(f"token range must be [low, high] with 0 < low < high, got {token_range}")
    return lo, hi


# ---- public intervals -----------------------------------------------------------------------------


def beta_intervals(curve: Curve, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                   level: float = DEFAULT_LEVEL,
                   method: str = DEFAULT_METHOD) -> list[dict[str, Any]]:
    """Question-level intervals at each β: [{"beta", "accuracy": Interval (percent), "tokens":
    Interval (mean per question)}], in the curve's β order."""
    check_method(method, level)
    w = question_weights(curve.store, curve.num_questions, resamples, seed)
    jw = _jackknife(curve.num_questions)
    acc_b, tok_b = _wmean(w, curve.accuracy), _wmean(w, curve.tokens)  # [R, B]
    acc_j, tok_j = _wmean(jw, curve.accuracy), _wmean(jw, curve.tokens)
    est_a, est_t = curve.point_accuracy(), curve.point_tokens()
    lo_a, hi_a = _intervals(est_a, acc_b, acc_j, level, method)
    lo_t, hi_t = _intervals(est_t, tok_b, tok_j, level, method)
    if curve.num_questions < 2:  # no spread to resample: no interval (NO_INTERVAL)
        lo_a = hi_a = lo_t = hi_t = np.full(len(curve.betas), math.nan)
    return [
        {"beta": beta,
         "accuracy": Interval(float(est_a[i]), float(lo_a[i]), float(hi_a[i]), level, method),
         "tokens": Interval(float(est_t[i]), float(lo_t[i]), float(hi_t[i]), level, method)}
        for i, beta in enumerate(curve.betas)
    ]


def auc(curve: Curve, token_range: Sequence[float] = DEFAULT_TOKEN_RANGE) -> float:
    """The objective's per-store AUC of a curve (no resampling)."""
    return float(_curve_auc(curve, _uniform(curve.num_questions), check_range(token_range))[0])


def _auc_draws(curve: Curve, token_range: tuple[float, float], resamples: int,
               seed: int, key: str | None = None) -> np.ndarray:
    """The curve's AUC at the estimate, in each resample and in each jackknife sample, in one
    array [1 + R + Q] (the layout `_pool` reads). `key` names the resamples (the store's
    question set, `_cluster_keys`); default the store's name."""
    n = curve.num_questions
    w = question_weights(curve.store if key is None else key, n, resamples, seed)
    return _curve_auc(curve, np.concatenate([_uniform(n), w, _jackknife(n)]), token_range)


def question_clusters(stores: Iterable[Any]) -> dict[str, str]:
    """{store name: key of its question set} for opened stores: stores that hold the same
    questions (the same texts and gold answers, in the same order; e.g. every model's replay of
    AIME 2024) share a key, their names sorted and joined by " + ", and a store whose questions no
    other store here holds keeps its own name (so its resamples are those it always had).
    `compare` and `pooled_auc_interval` take it as `clusters`: stores with one key are resampled
    together, question i of each in the same resample, since a figure pooled over them rests on
    one sample of questions, not on one per store."""
    import hashlib

    digests: dict[str, str] = {}
    for st in stores:
        t = st.questions
        h = hashlib.sha256()
        for col in ("question", "gold"):
            for v in t.column(col).to_pylist() if col in t.column_names else []:
                h.update(json.dumps(v).encode("utf-8") + b"\n")
        digests[str(st.name)] = h.hexdigest()
    return _keys(digests)


def clusters_by_name(names: Iterable[str], sizes: Mapping[str, int] | None = None
                     ) -> dict[str, str]:
    """`question_clusters` from store names alone (result files, no store opened): stores named
    MODEL/BENCHMARK (the published replays' names) with the same BENCHMARK and, given `sizes`
    ({name: questions}), the same number of questions are taken to hold the same questions; any
    other store stands alone (a store of a subset of a benchmark's questions, under the same
    name, is no error, only not grouped). The keys are `question_clusters`' for the same
    grouping. Resampling stores of one benchmark together by question index is valid even if
    their questions differ (the pairs are still independent across questions); resampling them
    apart when they share questions is not."""
    def group(n: str) -> str:
        parts = n.split("/")
        if len(parts) != 2:
            return n
        return f"/{parts[1]}" + ("" if sizes is None else f"#{sizes.get(n, -1)}")

    return _keys({n: group(n) for n in names})


def _keys(group_of: Mapping[str, str]) -> dict[str, str]:
    """{name: key} from {name: what it is grouped by}: the sorted names of its group joined by
    " + " where the group has several, else its own name."""
    groups: dict[str, list[str]] = {}
    for n, g in group_of.items():
        groups.setdefault(g, []).append(n)
    return {n: " + ".join(sorted(groups[g])) if len(groups[g]) > 1 else n
            for n, g in group_of.items()}


def _cluster_of(names: Sequence[str], sizes: Sequence[int],
                clusters: Mapping[str, str] | None) -> list[str]:
    """Each store's resampling key: its cluster's (clusters[name]), else its own name. Stores of
    one cluster must have the same number of questions."""
    keys = [str((clusters or {}).get(n, n)) for n in names]
    size: dict[str, tuple[str, int]] = {}
    for n, k, q in zip(names, keys, sizes, strict=True):
        if k in size and size[k][1] != q:
            raise ConfigError(f"{size[k][0]} and {n} are said to hold the same questions but have "
                              f"{size[k][1]} and {q}")
        size.setdefault(k, (n, q))
    return keys


@dataclass(frozen=True)
class _Pooled:
    """One statistic pooled over stores: its estimate, bootstrap and jackknife values, and each
    store's own."""

    est: float
    boot: np.ndarray  # [R]
    jack: np.ndarray  # [ΣQ]: stratified jackknife
    per_est: list[float]
    per_boot: list[np.ndarray]
    per_jack: list[np.ndarray]


def _pool(values: Sequence[np.ndarray], resamples: int,
          keys: Sequence[str] | None = None) -> _Pooled:
    """Mean over stores of per-store values laid out as `_auc_draws` does. Each store was
    resampled with its key's resamples (`keys`; default: every store its own): stores with
    different keys independently (stratified), stores with one key together. Either way
    resample r of the mean is the mean of resample r of each store. The jackknife drops one
    question of one key's question set: from every store of that key at once, the others at their
    estimate."""
    per_est = [float(v[0]) for v in values]
    per_boot = [v[1:1 + resamples] for v in values]
    per_jack = [v[1 + resamples:] for v in values]
    s = len(values)
    total = float(np.sum(per_est))
    keys = list(keys) if keys is not None else [str(i) for i in range(s)]
    blocks = []
    for k in dict.fromkeys(keys):
        members = [i for i in range(s) if keys[i] == k]
        e = sum(per_est[i] for i in members)
        j = np.sum([per_jack[i] for i in members], axis=0)
        blocks.append((total - e + j) / s)
    jack = np.concatenate(blocks)
    return _Pooled(total / s, np.mean(per_boot, axis=0), jack, per_est, per_boot, per_jack)


def auc_interval(curve: Curve, token_range: Sequence[float] = DEFAULT_TOKEN_RANGE, *,
                 resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                 level: float = DEFAULT_LEVEL, method: str = DEFAULT_METHOD) -> Interval:
    """The AUC objective of one curve (one store) and its interval over questions."""
    return pooled_auc_interval([curve], token_range, resamples=resamples, seed=seed,
                               level=level, method=method)


def pooled_auc_interval(curves: Sequence[Curve],
                        token_range: Sequence[float] = DEFAULT_TOKEN_RANGE, *,
                        resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                        level: float = DEFAULT_LEVEL, method: str = DEFAULT_METHOD,
                        clusters: Mapping[str, str] | None = None) -> Interval:
    """The objective over several stores (the mean of their AUCs, one curve per store), with its
    interval; each store's questions are resampled separately (stratified), except that stores
    sharing a key in `clusters` (`question_clusters`) share their resamples."""
    check_method(method, level)
    if not curves:
        raise ConfigError("no curves for an AUC")
    tr = check_range(token_range)
    keys = _cluster_of([c.store for c in curves], [c.num_questions for c in curves], clusters)
    p = _pool([_auc_draws(c, tr, resamples, seed, k) for c, k in zip(curves, keys, strict=True)],
              resamples, keys)
    if min(c.num_questions for c in curves) < 2:
        return _undefined(p.est, level, method)
    return Interval(p.est, *_interval(p.est, p.boot, p.jack, level, method), level, method)


def _by_store(curves: Sequence[Curve] | Mapping[Any, Curve]) -> dict[str, Curve]:
    items = list(curves.values()) if isinstance(curves, Mapping) else list(curves)
    out: dict[str, Curve] = {}
    for c in items:
        if c.store in out:
            raise ConfigError(f"two curves of {c.store} for one controller "
                              f"({out[c.store].controller}, {c.controller})")
        out[c.store] = c
    return out


def compare(a: Sequence[Curve] | Mapping[Any, Curve], b: Sequence[Curve] | Mapping[Any, Curve],
            token_range: Sequence[float] = DEFAULT_TOKEN_RANGE, *,
            stores: Sequence[str] | None = None, resamples: int = DEFAULT_RESAMPLES,
            seed: int = 0, level: float = DEFAULT_LEVEL,
            method: str = DEFAULT_METHOD,
            clusters: Mapping[str, str] | None = None) -> Comparison:
    """ΔAUC = AUC(a) − AUC(b) on every store both have (or `stores`), and pooled (the mean over
    those stores, discovery's objective), each with its paired, stratified interval and the
    probability of improvement. `a` and `b` are one controller's curves, one per store.
    `clusters` ({store: key}, `question_clusters` or `clusters_by_name`): stores with one key hold
    the same questions and are resampled together; without it every store is resampled on its
    own, which makes a pooled interval too narrow where stores share their questions."""
    check_method(method, level)
    tr = check_range(token_range)
    ca, cb = _by_store(a), _by_store(b)
    names = list(stores) if stores is not None else [s for s in ca if s in cb]
    missing = [s for s in names if s not in ca or s not in cb]
    if missing:
        who = "A" if missing[0] not in ca else "B"
        raise ConfigError(f"no results of {who} on {missing[0]}")
    if not names:
        raise ConfigError("the two controllers share no store")
    for s in names:
        if ca[s].num_questions != cb[s].num_questions:
            raise ConfigError(f"{s}: {ca[s].controller} has {ca[s].num_questions} questions, "
                              f"{cb[s].controller} {cb[s].num_questions}: not the same store")
    keys = _cluster_of(names, [ca[s].num_questions for s in names], clusters)
    va = [_auc_draws(ca[s], tr, resamples, seed, k) for s, k in zip(names, keys, strict=True)]
    vb = [_auc_draws(cb[s], tr, resamples, seed, k) for s, k in zip(names, keys, strict=True)]
    d = _pool([x - y for x, y in zip(va, vb, strict=True)], resamples, keys)
    # A store of one question has no interval, nor has a figure pooled over it (its share of the
    # spread is unknown): NO_INTERVAL, never significant.
    ok = {s: ca[s].num_questions >= 2 for s in names}
    all_ok = all(ok.values())

    def diff(est: float, boot: np.ndarray, jack: np.ndarray, defined: bool) -> Difference:
        if not defined:
            return Difference(est, math.nan, math.nan, level, method, math.nan)
        return Difference(est, *_interval(est, boot, jack, level, method), level, method,
                          _prob_improvement(boot), _p_value(est, boot, jack, method))

    def interval(est: float, boot: np.ndarray, jack: np.ndarray, defined: bool) -> Interval:
        if not defined:
            return _undefined(est, level, method)
        return Interval(est, *_interval(est, boot, jack, level, method), level, method)

    per_store = {s: diff(e, bt, jk, ok[s])
                 for s, e, bt, jk in zip(names, d.per_est, d.per_boot, d.per_jack, strict=True)}
    pooled = diff(d.est, d.boot, d.jack, all_ok)

    def intervals(values: list[np.ndarray]) -> tuple[dict[str, Interval], Interval]:
        p = _pool(values, resamples, keys)
        each = {s: interval(e, bt, jk, ok[s])
                for s, e, bt, jk in zip(names, p.per_est, p.per_boot, p.per_jack, strict=True)}
        return each, interval(p.est, p.boot, p.jack, all_ok)

    auc_a, pooled_a = intervals(va)
    auc_b, pooled_b = intervals(vb)
    return Comparison(ca[names[0]].controller, cb[names[0]].controller, per_store, pooled,
                      auc_a, auc_b, pooled_a, pooled_b, tr)


def _value_at_tokens(curve: Curve, w: np.ndarray, at: float) -> np.ndarray:
    """Accuracy of the curve (piecewise linear in log tokens, flat beyond its ends) at `at` tokens
    under each row of question weights."""
    keep = [i for i, b in enumerate(curve.betas) if b is not None] or list(range(len(curve.betas)))
    from autotts.metrics import auc_log_tokens_batch

    return auc_log_tokens_batch(_wmean(w, curve.tokens[keep]), _wmean(w, curve.accuracy[keep]),
                                at, at)


def delta_accuracy_at_tokens(a: Curve, b: Curve, at: Sequence[float] | None = None, *,
                             resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                             level: float = DEFAULT_LEVEL,
                             method: str = DEFAULT_METHOD) -> list[tuple[float, Difference]]:
    """Δaccuracy (points) = acc_a(t) − acc_b(t) at matched mean tokens t, each curve read at t by
    the objective's interpolation (linear in log tokens). `at` defaults to B's own β points that
    lie where both curves have points (no extrapolation). In each resample both curves are
    re-estimated from the same questions and read at the same t."""
    check_method(method, level)
    if a.store != b.store or a.num_questions != b.num_questions:
        raise ConfigError(f"Δaccuracy needs both controllers on one store ({a.store}, {b.store})")
    if at is None:
        ta, tb = a.point_tokens(), b.point_tokens()
        lo, hi = max(ta.min(), tb.min()), min(ta.max(), tb.max())
        at = sorted({float(t) for t in tb if lo <= t <= hi})
    n = a.num_questions
    w = question_weights(a.store, n, resamples, seed)
    allw = np.concatenate([_uniform(n), w, _jackknife(n)])
    out = []
    for t in at:
        if not t > 0:
            raise ConfigError(f"matched tokens must be > 0, got {t}")
        d = _value_at_tokens(a, allw, float(t)) - _value_at_tokens(b, allw, float(t))
        est, boot, jack = float(d[0]), d[1:1 + resamples], d[1 + resamples:]
        if n < 2:
            out.append((float(t), Difference(est, math.nan, math.nan, level, method, math.nan)))
            continue
        out.append((float(t), Difference(est, *_interval(est, boot, jack, level, method), level,
                                         method, _prob_improvement(boot),
                                         _p_value(est, boot, jack, method))))
    return out


def question_table(a: Curve, b: Curve,
                   token_range: Sequence[float] = DEFAULT_TOKEN_RANGE) -> list[dict[str, Any]]:
    """Which questions a ΔAUC comes from, one entry per question of the store: accuracy of A and of
    B (percent, mean over β), their difference, and the question's contribution to ΔAUC (its
    jackknife pseudo-value divided by Q: the contributions add up to about ΔAUC, exactly for a
    statistic linear in the questions), marked win / loss / tie by its sign."""
    if a.store != b.store or a.num_questions != b.num_questions:
        raise ConfigError(f"question table needs both controllers on one store ({a.store}, {b.store})")
    tr = check_range(token_range)
    n = a.num_questions
    allw = np.concatenate([_uniform(n), _jackknife(n)])
    d = _curve_auc(a, allw, tr) - _curve_auc(b, allw, tr)
    full, loo = float(d[0]), d[1:]
    contrib = (n * full - (n - 1) * loo) / n if n > 1 else np.array([full])
    acc_a, acc_b = a.accuracy.mean(axis=0), b.accuracy.mean(axis=0)
    out = []
    for q in range(n):
        c = float(contrib[q])
        out.append({
            "store": a.store, "question": q, "accuracy_a": float(acc_a[q]),
            "accuracy_b": float(acc_b[q]), "delta_accuracy": float(acc_a[q] - acc_b[q]),
            "contribution": c,
            "outcome": "win" if c > 1e-9 else "loss" if c < -1e-9 else "tie",
        })
    return out


def attach_question_intervals(rows: Sequence[dict[str, Any]],
                              episodes: Sequence[Mapping[str, Any]] | None = None, *,
                              curves: Mapping[tuple[str, str], Curve] | None = None,
                              resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                              level: float = DEFAULT_LEVEL,
                              method: str = DEFAULT_METHOD) -> Sequence[dict[str, Any]]:
    """Give each result row (eval's) its question-level intervals, in place:
    "accuracy_ci_questions" and "tokens_ci_questions" ([low, high]) and "ci_level". The outcomes
    come from `curves` (e.g. `curves_from_outcomes`), else from `episodes` (episode rows), else
    from the rows' embedded episodes; rows with none of these are left alone. Returns the rows."""
    if curves is None and episodes:
        curves = curves_from_episodes(episodes)
    elif curves is None:
        with_eps = [r for r in rows if isinstance(r.get("episodes"), dict)]
        if not with_eps:
            return rows
        curves = curves_from_rows(with_eps)
    found: dict[tuple[str, str, Any], dict[str, Any]] = {}
    for (store, controller), c in curves.items():
        for iv in beta_intervals(c, resamples=resamples, seed=seed, level=level, method=method):
            found[(store, controller, iv["beta"])] = iv
    for r in rows:
        beta = r.get("beta")
        iv = found.get((str(r["store"]), str(r.get("controller", "")),
                        None if beta is None else float(beta)))
        if iv is None:
            continue
        r["accuracy_ci_questions"] = [_or_none(iv["accuracy"].low), _or_none(iv["accuracy"].high)]
        r["tokens_ci_questions"] = [_or_none(iv["tokens"].low), _or_none(iv["tokens"].high)]
        r["ci_level"] = level
    return rows


def comparison_rows(cmp: Comparison, group: str = "") -> list[dict[str, Any]]:
    """A comparison as flat table rows (one per store, then "pooled" where there are several
    stores): group, store, a, b, auc_a, auc_b, delta, low, high, prob_improvement, verdict. For
    report tables (build_report's extra_tables) and JSON."""
    def row(store: str, d: Difference, ia: Interval | None, ib: Interval | None) -> dict[str, Any]:
        return {"group": group, "store": store, "a": cmp.a, "b": cmp.b,
                "auc_a": None if ia is None else ia.estimate,
                "auc_b": None if ib is None else ib.estimate,
                "delta": d.estimate, "low": _or_none(d.low), "high": _or_none(d.high),
                "prob_improvement": _or_none(d.prob_improvement), "verdict": d.verdict()}

    out = [row(s, d, cmp.auc_a.get(s), cmp.auc_b.get(s)) for s, d in cmp.stores.items()]
    if len(cmp.stores) > 1:
        out.append(row("pooled", cmp.pooled, cmp.pooled_a, cmp.pooled_b))
    return out
