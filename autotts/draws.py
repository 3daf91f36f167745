"""Draw protocols (DESIGN §3): the order in which BRANCH / READ_NEW take a question's branches."""

from __future__ import annotations

import random
from functools import lru_cache

import numpy as np

PROTOCOLS = ("shuffle", "subsample")


@lru_cache(maxsize=4096)
def _shuffled(seed: int, m: int) -> np.ndarray:
    # random.shuffle's result depends only on the list's length, so shuffling indices in file
    # order is bit-identical to the published evaluator shuffling the branch objects themselves.
    order = list(range(m))
    random.Random(seed).shuffle(order)
    out = np.array(order, dtype=np.int64)
    out.flags.writeable = False
    return out


def draw_order(
    protocol: str, draw: int, question: int, pool_size: int, *, seed: int = 0, n: int | None = None
) -> np.ndarray:
    """Branch ids (rows of the question, file order) in the order draw `draw` takes them.

    shuffle:   the question's pool shuffled by a fresh random.Random(seed + draw), as the
               published evaluator does; with n, only its first n branches are available.
    subsample: n of the pool without replacement, from numpy's Generator seeded by
               (seed, draw, question).
    """
    if protocol == "shuffle":
        order = _shuffled(seed + draw, pool_size)
        return order if n is None or n >= pool_size else order[:n]
    if protocol == "subsample":
        k = pool_size if n is None else min(n, pool_size)
        rng = np.random.default_rng((seed, draw, question))
        return rng.choice(pool_size, size=k, replace=False).astype(np.int64)
    raise ValueError(f"unknown draw protocol {protocol!r} (expected one of {PROTOCOLS})")
