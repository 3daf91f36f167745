"""Metrics of accuracy–cost curves (DESIGN §6), in one place for every layer that scores: the
AUC over log tokens (discovery's objective, the report's summary, `autotts compare`), the Pareto
front (the report's and the sweep's marks) and β-monotonicity of cost (eval, sweep, the sandbox's
gate, the digest). No plotting, no I/O: the report module draws what these compute."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class MonotonicityViolation:
    store: str
    controller: str
    beta_low: float
    beta_high: float
    tokens_low: float
    tokens_high: float
    se: float  # combined standard error sqrt(se_low² + se_high²)
    allowed_drop: float

    @property
    def drop(self) -> float:
        return self.tokens_low - self.tokens_high

    def describe(self) -> str:
        return (
            f"{self.controller} on {self.store}: mean tokens fall from {self.tokens_low:,.0f} at "
            f"β={self.beta_low:g} to {self.tokens_high:,.0f} at β={self.beta_high:g} (more than "
            f"the {self.allowed_drop:,.0f} the standard errors allow)"
        )


def monotonicity_violations(
    rows: Sequence[dict[str, Any]], tolerance: float = 1.0, *, all_pairs: bool = False
) -> list[MonotonicityViolation]:
    """Measured β-monotonicity of cost: per (store, controller), over rows sorted by β, mean tokens
    must never drop by more than `tolerance` combined standard errors, sqrt(se_a² + se_b²).
    Consecutive β are compared, or every pair β_a < β_b with all_pairs (which also catches a slow
    decline made of steps that are each within noise). Rows without a β are ignored."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("beta") is not None:
            groups.setdefault((str(r["store"]), str(r.get("controller", ""))), []).append(r)
    out = []
    for (store, controller), items in groups.items():
        items = sorted(items, key=lambda r: float(r["beta"]))
        if all_pairs:
            pairs = list(itertools.combinations(items, 2))
        else:
            pairs = list(itertools.pairwise(items))
        for a, b in pairs:
            if float(a["beta"]) == float(b["beta"]):
                continue
            ta, tb = float(a["tokens"]), float(b["tokens"])
            se = math.hypot(float(a.get("tokens_se") or 0.0), float(b.get("tokens_se") or 0.0))
            allowed = tolerance * se
            # The relative epsilon keeps float noise between equal costs from counting.
            if ta - tb > allowed and ta - tb > 1e-9 * max(1.0, abs(ta)):
                out.append(MonotonicityViolation(
                    store, controller, float(a["beta"]), float(b["beta"]), ta, tb, se, allowed
                ))
    return out


def pareto_front(points: Any) -> np.ndarray:
    """Mask of the Pareto-optimal points among (tokens, accuracy) pairs: a point is optimal when no
    other point costs no more and is at least as accurate, and strictly better in one of the two.
    Identical points are all optimal or all not; points with a NaN are never optimal."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    if len(p) == 0:
        return np.zeros(0, dtype=bool)
    t, a = p[:, 0], p[:, 1]
    le = t[None, :] <= t[:, None]
    ge = a[None, :] >= a[:, None]
    strict = (t[None, :] < t[:, None]) | (a[None, :] > a[:, None])
    dominated = (le & ge & strict).any(axis=1)
    return ~dominated & np.isfinite(p).all(axis=1)


def auc_log_tokens(
    tokens: Sequence[float] | np.ndarray,
    accuracy: Sequence[float] | np.ndarray,
    lo: float | None = None,
    hi: float | None = None,
) -> float:
    """Area under the accuracy-vs-log10(tokens) curve between `lo` and `hi` tokens (default: the
    curve's own cheapest and dearest points), divided by the width log10(hi/lo): the curve's mean
    accuracy over that log-token range, in the units of `accuracy`. The curve is piecewise linear
    in log tokens through the points sorted by tokens (points at equal tokens are averaged) and
    flat beyond its ends. With lo == hi it is the curve's value there."""
    t = np.asarray(tokens, dtype=float).ravel()
    a = np.asarray(accuracy, dtype=float).ravel()
    if len(t) != len(a) or len(t) == 0:
        raise ValueError("auc_log_tokens needs equally long, non-empty tokens and accuracy")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(a))) or np.any(t <= 0):
        raise ValueError("auc_log_tokens needs finite accuracy and positive, finite tokens")
    x_all = np.log10(t)
    x, inv = np.unique(x_all, return_inverse=True)
    y = np.bincount(inv, weights=a) / np.bincount(inv)
    x_lo = x[0] if lo is None else math.log10(lo)
    x_hi = x[-1] if hi is None else math.log10(hi)
    if x_hi < x_lo:
        raise ValueError(f"auc_log_tokens: hi ({hi}) is below lo ({lo})")
    if x_hi == x_lo:
        return float(np.interp(x_lo, x, y))
    grid = np.unique(np.concatenate([[x_lo, x_hi], x[(x > x_lo) & (x < x_hi)]]))
    g = np.interp(grid, x, y)
    return float(((g[1:] + g[:-1]) / 2 * np.diff(grid)).sum() / (x_hi - x_lo))


# ---- the AUC objective, vectorized ---------------------------------------------------------------


def auc_log_tokens_batch(tokens: np.ndarray, accuracy: np.ndarray,
                         lo: float, hi: float) -> np.ndarray:
    """`auc_log_tokens(tokens[k], accuracy[k], lo, hi)` for every row k of [K, B] arrays
    at once (equal to it up to float rounding): the mean accuracy over [lo, hi] of the curve that is
    piecewise linear in log10(tokens) through the points (equal tokens averaged), flat beyond its
    ends."""
    t = np.atleast_2d(np.asarray(tokens, dtype=np.float64))
    a = np.atleast_2d(np.asarray(accuracy, dtype=np.float64))
    if t.shape != a.shape or t.shape[1] == 0:
        raise ValueError("auc_log_tokens_batch needs equally shaped, non-empty [K, B] arrays")
    if not (lo > 0 and hi >= lo):
        raise ValueError(f"auc_log_tokens_batch: bad token range [{lo}, {hi}]")
    k, b = t.shape
    # A resample of questions that all cost nothing has mean 0 tokens: keep it finite (far left).
    x = np.log10(np.maximum(t, 1e-300))
    order = np.argsort(x, axis=1, kind="stable")
    x = np.take_along_axis(x, order, axis=1)
    y = np.take_along_axis(a, order, axis=1)
    if b == 1:
        return y[:, 0].copy()
    new = np.ones((k, b), dtype=bool)
    new[:, 1:] = x[:, 1:] != x[:, :-1]
    if not new.all():  # points at equal tokens: each takes the group's mean accuracy
        gid = np.cumsum(new, axis=1) - 1 + (np.arange(k) * b)[:, None]
        sums = np.bincount(gid.ravel(), weights=y.ravel(), minlength=k * b)
        cnt = np.bincount(gid.ravel(), minlength=k * b)
        y = (sums / np.maximum(cnt, 1))[gid]
    rows = np.arange(k)

    def value_at(x0: float) -> np.ndarray:
        idx = (x <= x0).sum(axis=1)
        i1 = np.clip(idx, 1, b - 1)
        i0 = i1 - 1
        x_0, x_1 = x[rows, i0], x[rows, i1]
        y_0, y_1 = y[rows, i0], y[rows, i1]
        with np.errstate(divide="ignore", invalid="ignore"):
            mid = y_0 + (x0 - x_0) * (y_1 - y_0) / (x_1 - x_0)
        return np.where(idx == 0, y[:, 0], np.where(idx == b, y[:, -1], mid))

    x_lo, x_hi = math.log10(lo), math.log10(hi)
    f_lo = value_at(x_lo)
    if x_hi == x_lo:
        return f_lo
    f_hi = value_at(x_hi)
    xs = np.concatenate([np.full((k, 1), x_lo), np.clip(x, x_lo, x_hi), np.full((k, 1), x_hi)],
                        axis=1)
    inner = np.where(x < x_lo, f_lo[:, None], np.where(x > x_hi, f_hi[:, None], y))
    vs = np.concatenate([f_lo[:, None], inner, f_hi[:, None]], axis=1)
    area = ((vs[:, 1:] + vs[:, :-1]) * 0.5 * np.diff(xs, axis=1)).sum(axis=1)
    return area / (x_hi - x_lo)
