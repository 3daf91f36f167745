"""Paired uncertainty of objective differences for discovery (issue 15, item 3).

What is compared: two controllers' objectives (the normalized log-token AUC, docs/discovery.md)
on the same stores. What varies: which questions were asked. Each store has a few dozen
questions, and that choice dominates the noise, so the interval comes from `autotts.stats`, the
project's paired bootstrap over questions: the same resampled questions for both controllers,
within each store (stratified; stores holding the same questions, as every model's replay of one
benchmark does, share their resamples), each question's draws averaged inside it, pooled as the
mean of the per-store differences (as the objective is the mean of the per-store AUCs); BCa 95%
interval, and the probability of improvement.

Input is the per-question table the loop records for every controller it evaluates
(`per_question_table`: the `Curve` arrays of autotts.stats, as JSON), so nothing is re-evaluated
and the run directory holds everything the intervals are computed from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from autotts import stats
from autotts.errors import ConfigError

RESAMPLES = stats.DEFAULT_RESAMPLES
SEED = 0  # fixed: a run's prompts must be deterministic (the response cache keys on them)


def per_question_table(episodes: Sequence[dict[str, Any]] | None
                       ) -> dict[str, dict[str, Any]]:
    """{store: {"betas": [...], "questions": [...], "accuracy": [[% per question] per β],
    "tokens": [[mean tokens per question] per β]}}: each question's mean over its draws.
    Episodes scored as failures count as wrong, with their tokens."""
    acc: dict[tuple[str, float, int], list[float]] = {}
    tok: dict[tuple[str, float, int], list[float]] = {}
    for e in episodes or []:
        if e.get("beta") is None:
            continue
        k = (str(e["store"]), float(e["beta"]), int(e["question"]))
        acc.setdefault(k, []).append(100.0 if e.get("correct") else 0.0)
        tok.setdefault(k, []).append(float(e.get("tokens") or 0.0))
    out: dict[str, dict[str, Any]] = {}
    for store in sorted({k[0] for k in acc}):
        betas = sorted({k[1] for k in acc if k[0] == store})
        qs = sorted({k[2] for k in acc if k[0] == store})
        out[store] = {
            "betas": betas, "questions": qs,
            "accuracy": [[round(float(np.mean(acc.get((store, b, q), [0.0]))), 4) for q in qs]
                         for b in betas],
            "tokens": [[round(float(np.mean(tok.get((store, b, q), [0.0]))), 2) for q in qs]
                       for b in betas],
        }
    return out


def _curve(store: str, name: str, t: dict[str, Any]) -> stats.Curve:
    return stats.Curve(store, name, tuple(float(b) for b in t["betas"]),
                       np.asarray(t["accuracy"], dtype=np.float64),
                       np.asarray(t["tokens"], dtype=np.float64), tuple(1 for _ in t["betas"]))


def curves_of(tables: dict[str, dict[str, Any]], name: str) -> dict[str, stats.Curve]:
    """{store: stats.Curve} of one controller from its per-question tables (`per_question_table`),
    for the intervals of `autotts.stats` (the report's AUC intervals). Tables without questions
    are left out."""
    return {s: _curve(s, name, t) for s, t in (tables or {}).items() if t.get("questions")}


def delta_auc(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]],
              stores: Sequence[str], token_range: tuple[float, float],
              resamples: int = RESAMPLES, seed: int = SEED,
              clusters: dict[str, str] | None = None) -> dict[str, Any] | None:
    """ΔAUC = AUC(a) − AUC(b) with its paired 95% interval, per store and pooled, as
    {"stores": {store: iv}, "pooled": iv, "method": ...}, iv = {"delta", "low", "high",
    "p_improvement", "significant"}. None when a store lacks either table or their questions or
    β grids differ (nothing comparable). `clusters` ({store: key}, `stats.question_clusters`):
    stores holding the same questions, resampled together (every model's replay of one
    benchmark: the pooled figure rests on one sample of its questions)."""
    ca, cb = {}, {}
    for s in stores:
        ta, tb = a.get(s), b.get(s)
        if not ta or not tb or ta["questions"] != tb["questions"] or ta["betas"] != tb["betas"]:
            return None
        ca[s], cb[s] = _curve(s, "a", ta), _curve(s, "b", tb)
    try:
        c = stats.compare(ca, cb, token_range, stores=list(stores), resamples=resamples,
                          seed=seed, clusters=clusters)
    except ConfigError:
        return None
    return {"stores": {s: _iv(d) for s, d in c.stores.items()}, "pooled": _iv(c.pooled),
            "method": f"autotts.stats paired bootstrap over questions ({c.pooled.method}, "
            f"{resamples} resamples, {c.pooled.level:.0%})", "resamples": resamples}


def versus_best_seed(records: Sequence[dict[str, Any]], seeds: Sequence[dict[str, Any]],
                     reference: dict[str, Any] | None, stores: Sequence[str],
                     token_range: tuple[float, float], clusters: dict[str, str] | None = None,
                     cache: dict[tuple[str, str], dict[str, Any] | None] | None = None
                     ) -> dict[str, dict[str, Any] | None]:
    """Each seed's (but the reference's) and each candidate's objective minus the reference's
    (the best seed), pooled over `stores` as `delta_auc` gives it: {"seed:NAME" or the record's
    "id": its pooled interval (`cell` renders it), None where either lacks per-question outcomes
    (a record from before they were kept)}; records without an objective are left out. What the
    standings show beside every objective, so that each difference has its interval, not the
    lead's alone. Each interval is for its own comparison: over many lines some exclude 0 by
    chance (no adjustment: these guide the search, the held-out step judges).
    `cache` ({(key, reference name): result}) keeps the pairs already computed: records never
    change once written."""
    out: dict[str, dict[str, Any] | None] = {}
    if reference is None:
        return out
    ref_name, ref_table = str(reference["name"]), reference.get("per_question") or {}
    items = [(f"seed:{s['name']}", s) for s in seeds if s is not reference]
    items += [(str(r["id"]), r) for r in records]
    for key, rec in items:
        if rec.get("objective") is None:
            continue
        memo = (key, ref_name)
        if cache is not None and memo in cache:
            out[key] = cache[memo]
            continue
        table = rec.get("per_question") or {}
        res = (delta_auc(table, ref_table, stores, token_range, clusters=clusters)
               if table and ref_table else None)
        if res is not None:  # the pooled figure is the difference of the two objectives
            res = res["pooled"]
        out[key] = res
        if cache is not None:
            cache[memo] = res
    return out


def _iv(d: stats.Difference) -> dict[str, Any]:
    if not d.defined:  # a store of one question: no interval (stats.NO_INTERVAL)
        return {"delta": round(float(d.estimate), 4), "low": None, "high": None,
                "p_improvement": None, "significant": False}
    return {"delta": round(float(d.estimate), 4), "low": round(float(d.low), 4),
            "high": round(float(d.high), 4), "p_improvement": round(float(d.prob_improvement), 4),
            "significant": bool(d.significant), "p_value": round(float(d.p_value), 4)}


def adjust(comparisons: dict[str, dict[str, Any]], level: float = 0.95) -> int:
    """Holm over the held-out step's headline claims, in place: the selected candidate's pooled
    ΔAUC against each baseline is one comparison of a family (a "significant" against one of six
    baselines is more likely by chance than against one). Each pooled entry gets "p_holm" and
    "significant_holm"; the per-store entries stay uncorrected. Returns the family's size."""
    names = [n for n, c in comparisons.items() if c["pooled"].get("p_value") is not None]
    adjusted = stats.holm([comparisons[n]["pooled"]["p_value"] for n in names])
    for n, h in zip(names, adjusted, strict=True):
        iv = comparisons[n]["pooled"]
        iv["p_holm"] = round(float(h), 4)
        iv["significant_holm"] = bool(iv["significant"] and h < 1 - level)
    return len(names)


def bracket(iv: dict[str, Any]) -> str:
    """'+1.28 [-0.41, +2.90]', or the estimate and stats.NO_INTERVAL where there is none."""
    if iv["low"] is None or iv["high"] is None:
        return f"{iv['delta']:+.2f} {stats.NO_INTERVAL}"
    return f"{iv['delta']:+.2f} [{iv['low']:+.2f}, {iv['high']:+.2f}]"


def cell(iv: dict[str, Any] | None, delta: float | None = None) -> str:
    """A difference as one short table cell (the prompt's standings, the run report's tables):
    '-3.12 [-5.01, -1.40] worse', '+0.12 [-0.40, +0.70] within noise'. Where there is no interval
    (`iv` None: no per-question outcomes to resample, e.g. a record from before they were kept;
    or a store of one question) it says so beside the point `delta`, never a bare number."""
    if iv is None:
        return "" if delta is None else f"{delta:+.2f} (no interval)"
    if iv["low"] is None or iv["high"] is None:
        return f"{iv['delta']:+.2f} (no interval: < 2 questions)"
    word = ("within noise" if not iv["significant"] else
            "better" if iv["low"] > 0 else "worse")
    return f"{bracket(iv)} {word}"


def describe(iv: dict[str, Any]) -> str:
    """'+1.28 [-0.41, +2.90], within noise (not significant)' / '..., significantly better'."""
    txt = bracket(iv)
    if iv["low"] is None:
        return txt
    if not iv["significant"]:
        return txt + ", within noise (not significant)"
    txt += ", significantly better" if iv["low"] > 0 else ", significantly worse"
    if iv.get("significant_holm") is False:  # adjusted over several baselines (`adjust`)
        txt += f" alone, not after Holm over the baselines (adjusted p {iv['p_holm']:.3f})"
    return txt
