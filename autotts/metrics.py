"""Metrics over evaluation rows (DESIGN §6) that do not depend on plotting."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


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
