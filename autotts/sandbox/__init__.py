"""Untrusted controller code (DESIGN §7): admission, the judge boundary, the sandbox process.

    verdict = admit(source, filename)               # static checks
    ev = evaluate_sandboxed(source, stores, betas)  # same rows as autotts.evaluate.evaluate
    verdict = monotonicity(ev.rows)                 # cost must grow with β

Modules: admission (static checks, verdict kinds), wire (frames), judge (the trusted engine
server), supervisor (one sandbox process: spawn, serve, watch), evaluation (the entry point),
child / client / guards / lockdown (what runs inside the sandbox process). docs/sandbox.md has
the threat model.
"""

from autotts.sandbox.admission import VERDICT_KINDS, Verdict, admit
from autotts.sandbox.evaluation import (
    SandboxError,
    SandboxEvaluation,
    evaluate_sandboxed,
    monotonicity,
    run_sandbox_task,
    sandbox_overhead,
)
from autotts.sandbox.supervisor import SandboxLimits, scrubbed_env, spawned_pids

__all__ = [
    "VERDICT_KINDS",
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
]
