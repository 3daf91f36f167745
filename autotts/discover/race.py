"""Racing over draws (issue 18): a candidate's sweep runs its first `k` draws, then stops when
even an optimistic bound of its objective over all N draws is below the best so far.

The rule. The k-draw objective O_k is the objective of the k-draw rows (what a stopped candidate
records). Its spread around the N-draw objective O_N is estimated by a jackknife over draws within
questions (`jackknife_se`): for each store and question q, leave out one of q's k draws at a time
(every other question keeps its k), recompute the objective, and add up the jackknife variances:

    se_k² = Σ_store,q (k − 1) / k · Σ_i (O_(q,−i) − mean_i O_(q,−i))²
    s     = se_k · sqrt(1 − k / N)            (O_k − O_N: the N draws contain the k)
    stop  ⇔  O_k + z · s < best

Questions are independent given the controller (each has its own branches), so their shares of
the variance add up; the estimate has about questions × (k − 1) degrees of freedom, where a
jackknife of whole draws has k − 1 and, at k = 5, stops 2% of candidates at the best instead of
0.1% (the calibration measures both).

`best` is the highest objective among the seeds and the eligible candidates of earlier rounds
(the same for every candidate of a round, whatever order they finish in). The bound holds for any best: a candidate whose full objective O_N reaches the best is
stopped only if O_k + z · s < best ≤ O_N, so the false-stop rate is at most
P(O_k + z · s < O_N), which `autotts.discover.race_calibration` measures on the published stores
(docs/discovery.md gives the figure, the default k and z).

Draws are exchangeable (each is an independent shuffle of every question's pool, seeded by its
index), so the first k draws are as good a sample as any k of them; the calibration uses random
k-subsets of 20-draw evaluations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from autotts.metrics import auc_log_tokens_batch

# Chosen from the calibration (docs/discovery.md, "Racing over draws"; env/aime-qwen3.toml, 18
# controllers × 100 draws and 2 × 20): at k = 5 of 20 draws and z = 3, 0.11% of candidates at
# exactly the best were stopped (at most 1.5% of any one controller's), while 87% of those 2
# points below it and 97% of those 3 points below were.
DEFAULT_RACE_DRAWS = 5
DEFAULT_RACE_Z = 3.0


@dataclass(frozen=True)
class Decision:
    """The race's verdict on a candidate after `draws` of `total` draws."""

    stop: bool
    draws: int
    total: int
    objective: float  # O_k: the objective of the first `draws` draws
    spread: float  # s: the estimated standard deviation of O_k − O_N
    bound: float  # O_k + z · s
    z: float
    best: float
    best_name: str

    def message(self) -> str:
        return (f"stopped early after {self.draws}/{self.total} draws: objective "
                f"{self.objective:.2f} + {self.z:g} × {self.spread:.2f} (spread) = bound "
                f"{self.bound:.2f} < best {self.best:.2f} ({self.best_name}); the other "
                f"{self.total - self.draws} draws were not run, so these figures are partial")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("objective", "spread", "bound", "best"):
            d[k] = round(float(d[k]), 6)
        return d


Table = list[tuple[np.ndarray, np.ndarray]]  # per store: (accuracy %, tokens), [β, question, draw]


def episode_table(episodes: Sequence[dict[str, Any]], stores: Sequence[str],
                  betas: Sequence[float]) -> Table:
    """Per store, (accuracy %, tokens) of every episode, each [β, question, draw] (failed
    episodes count as wrong, with their tokens, as in the rows)."""
    si = {s: i for i, s in enumerate(stores)}
    bi = {float(b): i for i, b in enumerate(betas)}
    eps = [e for e in episodes if e.get("beta") is not None and e["store"] in si]
    draws = 1 + max((int(e["draw"]) for e in eps), default=0)
    out = []
    for s in range(len(stores)):
        mine = [e for e in eps if si[e["store"]] == s]
        q = 1 + max((int(e["question"]) for e in mine), default=0)
        acc = np.zeros((len(betas), q, draws))
        tok = np.zeros_like(acc)
        for e in mine:
            key = (bi[float(e["beta"])], int(e["question"]), int(e["draw"]))
            acc[key] = 100.0 if e.get("correct") else 0.0
            tok[key] = float(e.get("tokens") or 0.0)
        out.append((acc, tok))
    return out


def subset_objectives(table: Table, subsets: np.ndarray,
                      token_range: tuple[float, float]) -> np.ndarray:
    """The objective of each row of `subsets` (a [K, k] array of draw indices): per store, the
    AUC of the curve through the subset's mean accuracy and tokens per β, then the mean over
    stores. [K] values (equal to `candidates.objective` of those draws' rows up to float
    rounding, for positive tokens)."""
    lo, hi = token_range
    out = np.zeros(len(subsets))
    for acc, tok in table:
        a = acc.mean(axis=1)[:, subsets].mean(axis=2).T  # [K, B]
        t = tok.mean(axis=1)[:, subsets].mean(axis=2).T
        out += auc_log_tokens_batch(t, a, lo, hi)
    return out / len(table)


def jackknife_se(table: Table, draws: Sequence[int], token_range: tuple[float, float]) -> float:
    """The standard error of the objective of `draws`' mean, by a jackknife over draws within
    questions. Questions are independent given the controller (each has its own branches), so
    the objective's variance is the sum of each question's share: for question q, leave one of
    its draws out at a time (the other questions keep all theirs), recompute, and take the
    jackknife variance of those k values; sum over questions and stores. This has about
    questions × (k − 1) degrees of freedom where a jackknife of whole draws has k − 1, so its
    bound is much less noisy for a small k."""
    d = np.asarray(draws)
    k = len(d)
    if k < 2:
        return math.inf
    lo, hi = token_range
    var = 0.0
    loo = np.array([np.delete(np.arange(k), i) for i in range(k)])  # [k, k-1]
    for acc, tok in table:
        a, t = acc[:, :, d], tok[:, :, d]  # [B, Q, k]
        nq = a.shape[1]
        am, tm = a.mean(axis=2), t.mean(axis=2)  # [B, Q]: each question's mean over draws
        # Each question's mean with draw i left out: [B, Q, k].
        a_loo, t_loo = a[:, :, loo].mean(axis=3), t[:, :, loo].mean(axis=3)
        # The cell means (over questions) of replicate (q, i): only question q changes.
        ra = am.mean(axis=1)[:, None, None] + (a_loo - am[:, :, None]) / nq
        rt = tm.mean(axis=1)[:, None, None] + (t_loo - tm[:, :, None]) / nq
        vals = auc_log_tokens_batch(rt.reshape(len(rt), -1).T, ra.reshape(len(ra), -1).T,
                                    lo, hi).reshape(nq, k)
        var += (k - 1) / k * float(((vals - vals.mean(axis=1, keepdims=True)) ** 2).sum())
    return math.sqrt(var) / len(table)


def jackknife_se_draws(table: Table, draws: Sequence[int],
                       token_range: tuple[float, float]) -> float:
    """The jackknife standard error over whole draws (k − 1 degrees of freedom): the
    calibration's comparison for `jackknife_se`."""
    d = np.asarray(draws)
    k = len(d)
    if k < 2:
        return math.inf
    vals = subset_objectives(table, np.array([np.delete(d, i) for i in range(k)]), token_range)
    return float(math.sqrt((k - 1) / k * float(((vals - vals.mean()) ** 2).sum())))


def spread(table: Table, draws: Sequence[int], total: int,
           token_range: tuple[float, float]) -> float:
    """s: the estimated standard deviation of O_k − O_N, for the k `draws` among `total`."""
    return jackknife_se(table, draws, token_range) * math.sqrt(max(0.0, 1 - len(draws) / total))


def decide(episodes: Sequence[dict[str, Any]], objective: float, *, stores: Sequence[str],
           betas: Sequence[float], token_range: tuple[float, float], total: int, z: float,
           best: float, best_name: str) -> Decision:
    """The race's verdict after the first draws (`episodes` of draws [0, k), `objective` their
    rows' objective)."""
    table = episode_table(episodes, stores, betas)
    k = table[0][0].shape[2]
    s = spread(table, range(k), total, token_range)
    bound = objective + z * s
    return Decision(stop=bool(bound < best), draws=k, total=total, objective=objective,
                    spread=s, bound=bound, z=z, best=best, best_name=best_name)
