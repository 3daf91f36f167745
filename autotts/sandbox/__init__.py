"""Untrusted controller code (DESIGN §7): admission, the judge boundary, the sandbox process.

    verdict = admit(source, filename)               # static checks
    ev = evaluate_sandboxed(source, stores, betas)  # same rows as autotts.evaluate.evaluate
    verdict = monotonicity(ev.rows)                 # cost must grow with β

Modules: admission (static checks, verdict kinds), wire (frames), judge (the trusted engine
server), supervisor (one sandbox process: spawn, serve, watch), evaluation (the entry point),
child / client / guards / lockdown (what runs inside the sandbox process). docs/sandbox.md has
the threat model.
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported on first use: the sandbox process imports this package (for its child, client, guards
# and wire modules) and must not load the judge's side (the evaluator, the store, pyarrow):
# every batch forks that process, and a fork costs in proportion to what it has mapped.
_EXPORTS = {
    "VERDICT_KINDS": "admission", "Verdict": "admission", "admit": "admission",
    "SandboxError": "evaluation", "SandboxEvaluation": "evaluation",
    "evaluate_sandboxed": "evaluation", "monotonicity": "evaluation",
    "start_sandboxed": "evaluation", "PendingEvaluation": "evaluation",
    "run_sandbox_task": "evaluation", "sandbox_overhead": "evaluation",
    "SandboxLimits": "supervisor", "scrubbed_env": "supervisor", "spawned_pids": "supervisor",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'autotts.sandbox' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"autotts.sandbox.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "VERDICT_KINDS",
    "PendingEvaluation",
    "SandboxError",
    "SandboxEvaluation",
    "SandboxLimits",
    "Verdict",
    "admit",
    "evaluate_sandboxed",
    "monotonicity",
    "run_sandbox_task",
    "sandbox_overhead",
    "scrubbed_env",
    "spawned_pids",
    "start_sandboxed",
]
