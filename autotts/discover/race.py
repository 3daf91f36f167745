"""Racing over draws (issue 18): a candidate's sweep runs its first `k` draws, then stops when
even an optimistic bound of its objective over all N draws is below the best so far.

The rule. From the k draws' episodes, per search store, β point and draw: the accuracy and mean
tokens over the questions. The k-draw objective O_k is the objective of the k-draw rows (what a
stopped candidate records). Its spread around the N-draw objective O_N is estimated by a
jackknife over the k draws (each draw left out in turn, the objective recomputed from the
others' means):

    se_k = sqrt((k − 1) / k · Σ_i (O_(−i) − mean O_(−i))²)     (the k-draw mean's standard error)
    s    = se_k · sqrt(1 − k / N)                              (O_k − O_N: the N draws contain
                                                               the k, a finite-population share)
    stop  ⇔  O_k + z · s < best

where `best` is the highest objective among the seeds and the eligible candidates of earlier
rounds. The bound holds for any best: a candidate whose full objective O_N reaches the best is
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

# Chosen from the calibration (docs/discovery.md, "Racing over draws"): at k = 5 of 20 draws,
# z = 3 stopped a candidate that would have reached the best in ... of ... measured cases.
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


def draw_table(episodes: Sequence[dict[str, Any]], stores: Sequence[str],
               betas: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy %, mean tokens), each [store, β, draw]: the mean over questions of each draw's
    episodes (failed episodes count as wrong, with their tokens, as in the rows)."""
    si = {s: i for i, s in enumerate(stores)}
    bi = {float(b): i for i, b in enumerate(betas)}
    draws = 1 + max(int(e["draw"]) for e in episodes)
    acc = np.zeros((len(stores), len(betas), draws))
    tok = np.zeros_like(acc)
    n = np.zeros_like(acc)
    for e in episodes:
        if e.get("beta") is None or e["store"] not in si:
            continue
        key = (si[e["store"]], bi[float(e["beta"])], int(e["draw"]))
        acc[key] += 100.0 if e.get("correct") else 0.0
        tok[key] += float(e.get("tokens") or 0.0)
        n[key] += 1
    n = np.maximum(n, 1)
    return acc / n, tok / n


def subset_objectives(acc: np.ndarray, tok: np.ndarray, subsets: np.ndarray,
                      token_range: tuple[float, float]) -> np.ndarray:
    """The objective of each row of `subsets` (a [K, k] array of draw indices): per store, the
    AUC of the curve through the subset's mean accuracy and tokens per β, then the mean over
    stores. [K] values (equal to `candidates.objective` of those draws' rows up to float
    rounding, for positive tokens)."""
    lo, hi = token_range
    out = np.zeros(len(subsets))
    for s in range(acc.shape[0]):
        a = acc[s][:, subsets].mean(axis=2).T  # [K, B]
        t = tok[s][:, subsets].mean(axis=2).T
        out += auc_log_tokens_batch(t, a, lo, hi)
    return out / acc.shape[0]


def jackknife_se(acc: np.ndarray, tok: np.ndarray, draws: Sequence[int],
                 token_range: tuple[float, float]) -> float:
    """The jackknife standard error, over `draws`, of their mean's objective."""
    d = np.asarray(draws)
    k = len(d)
    if k < 2:
        return math.inf
    loo = np.array([np.delete(d, i) for i in range(k)])
    vals = subset_objectives(acc, tok, loo, token_range)
    return float(math.sqrt((k - 1) / k * float(((vals - vals.mean()) ** 2).sum())))


def spread(acc: np.ndarray, tok: np.ndarray, draws: Sequence[int], total: int,
           token_range: tuple[float, float]) -> float:
    """s: the estimated standard deviation of O_k − O_N, for the k `draws` among `total`."""
    return jackknife_se(acc, tok, draws, token_range) * math.sqrt(max(0.0, 1 - len(draws) / total))


def decide(episodes: Sequence[dict[str, Any]], objective: float, *, stores: Sequence[str],
           betas: Sequence[float], token_range: tuple[float, float], total: int, z: float,
           best: float, best_name: str) -> Decision:
    """The race's verdict after the first draws (`episodes` of draws [0, k), `objective` their
    rows' objective)."""
    acc, tok = draw_table(episodes, stores, betas)
    k = acc.shape[2]
    s = spread(acc, tok, range(k), total, token_range)
    bound = objective + z * s
    return Decision(stop=bool(bound < best), draws=k, total=total, objective=objective,
                    spread=s, bound=bound, z=z, best=best, best_name=best_name)
