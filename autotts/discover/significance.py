"""Paired uncertainty of objective differences for discovery (issue 15, item 3).

What is compared: two controllers' objectives (the normalized log-token AUC, docs/discovery.md)
on the same stores. What varies: which questions were asked. Each store has a few dozen
questions, and that choice dominates the noise, so the interval resamples *questions*, paired:
the same resampled questions for both controllers, within each store (stratified), with the
draws of each question averaged inside it (the draws are nested in the question). The pooled
difference is the mean of the per-store differences, as the objective is the mean of the
per-store AUCs. 95% percentile interval of B seeded resamples; "probability of improvement" is
the share of resamples in which the difference is positive.

Input is the per-question table the loop records for every controller it evaluates
(`per_question_table`), so nothing is re-evaluated.

SEAM: issue 15's statistics module (`autotts.stats`, branch h-stats) is to provide the paired
bootstrap for the whole project. When it lands, `delta_auc` should call it; until then this
module implements the same method locally and is the only place that needs to change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from autotts.report import auc_log_tokens

RESAMPLES = 1000
SEED = 20240601  # fixed: a run's prompts must be deterministic (the response cache keys on them)
LEVEL = 0.95


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


def _auc(tokens: np.ndarray, acc: np.ndarray, token_range: tuple[float, float]) -> float:
    t = np.maximum(tokens, 1e-9)  # a controller that spends nothing sits at the range's floor
    return auc_log_tokens(t, acc, *token_range)


def delta_auc(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]],
              stores: Sequence[str], token_range: tuple[float, float],
              resamples: int = RESAMPLES, seed: int = SEED) -> dict[str, Any] | None:
    """ΔAUC = AUC(a) − AUC(b) with its paired 95% interval, per store and pooled. None when a
    store lacks either table or their questions or β grids differ."""
    lo_q, hi_q = (1 - LEVEL) / 2, 1 - (1 - LEVEL) / 2
    rng = np.random.default_rng(seed)
    per: dict[str, dict[str, Any]] = {}
    pooled = np.zeros(resamples)
    point_pooled = 0.0
    for s in stores:
        ta, tb = a.get(s), b.get(s)
        if not ta or not tb or ta["questions"] != tb["questions"] or ta["betas"] != tb["betas"]:
            return None
        acc_a, tok_a = np.asarray(ta["accuracy"]), np.asarray(ta["tokens"])
        acc_b, tok_b = np.asarray(tb["accuracy"]), np.asarray(tb["tokens"])
        nq = acc_a.shape[1]
        point = (_auc(tok_a.mean(1), acc_a.mean(1), token_range)
                 - _auc(tok_b.mean(1), acc_b.mean(1), token_range))
        # counts[r, q]: how often question q is in resample r (multinomial = resampling with
        # replacement); the same counts for both controllers: the pairing.
        counts = rng.multinomial(nq, np.full(nq, 1.0 / nq), size=resamples) / nq
        ma, mta = counts @ acc_a.T, counts @ tok_a.T
        mb, mtb = counts @ acc_b.T, counts @ tok_b.T
        d = np.array([_auc(mta[r], ma[r], token_range) - _auc(mtb[r], mb[r], token_range)
                      for r in range(resamples)])
        pooled += d / len(stores)
        point_pooled += point / len(stores)
        per[s] = _interval(point, d, lo_q, hi_q)
    return {"stores": per, "pooled": _interval(point_pooled, pooled, lo_q, hi_q),
            "method": f"paired percentile bootstrap over questions, {resamples} resamples, "
            f"{LEVEL:.0%}", "resamples": resamples}


def _interval(point: float, d: np.ndarray, lo_q: float, hi_q: float) -> dict[str, Any]:
    lo, hi = (float(x) for x in np.quantile(d, [lo_q, hi_q]))
    return {"delta": round(float(point), 4), "low": round(lo, 4), "high": round(hi, 4),
            "p_improvement": round(float((d > 0).mean()), 4),
            "significant": bool(lo > 0 or hi < 0)}


def describe(iv: dict[str, Any]) -> str:
    """'+1.28 [−0.41, +2.90], within noise' / '... significant'."""
    txt = f"{iv['delta']:+.2f} [{iv['low']:+.2f}, {iv['high']:+.2f}]"
    return txt + (", significant" if iv["significant"] else ", within noise (not significant)")
