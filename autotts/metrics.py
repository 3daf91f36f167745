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
    allowed_drop: float

    def describe(self) -> str:
        return (
            f"{self.controller} on {self.store}: mean tokens fall from {self.tokens_low:,.0f} at "
            f"β={self.beta_low:g} to {self.tokens_high:,.0f} at β={self.beta_high:g} (more than "
            f"the {self.allowed_drop:,.0f} the standard errors allow)"
        )


def monotonicity_violations(
    rows: Sequence[dict[str, Any]], tolerance: float = 1.0
) -> list[MonotonicityViolation]:
    """Measured β-monotonicity of cost: per (store, controller), over rows sorted by β, mean tokens
    must never drop between consecutive β by more than `tolerance` combined standard errors,
    sqrt(se_a² + se_b²). Rows without a β (explicit --set configurations) are ignored."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("beta") is not None:
            groups.setdefault((r["store"], r["controller"]), []).append(r)
    out = []
    for (store, controller), items in groups.items():
        items = sorted(items, key=lambda r: r["beta"])
        for a, b in itertools.pairwise(items):
            allowed = tolerance * math.hypot(a.get("tokens_se", 0.0), b.get("tokens_se", 0.0))
            if b["tokens"] < a["tokens"] - allowed:
                out.append(
                    MonotonicityViolation(
                        store, controller, a["beta"], b["beta"], a["tokens"], b["tokens"], allowed
                    )
                )
    return out
