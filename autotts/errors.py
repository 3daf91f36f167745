"""Every error a user of autotts may catch, in one place (as gymnasium.error is for Gymnasium).

The AutoTTSError family is the user's to fix, not a bug: the CLI prints its message on one line
and exits non-zero. Each class is also importable from the module that raises it (for example
`autotts.evaluate.EvaluationError`), where it was defined before.
"""

from __future__ import annotations

from typing import Any


class AutoTTSError(Exception):
    """Base class: anything raised as an AutoTTSError is the user's to fix, not a bug."""


# ---- data and configuration ------------------------------------------------------------------


class StoreError(AutoTTSError):
    """A replay store or AutoTTS JSON file is malformed; the message names file, question and field."""

    def __init__(
        self,
        path: object,
        message: str,
        *,
        question: int | None = None,
        field: str | None = None,
    ) -> None:
        where = str(path)
        if question is not None:
            where += f": question {question}"
        if field is not None:
            where += f", field '{field}'" if question is not None else f": field '{field}'"
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.question = question
        self.field = field


class ConfigError(AutoTTSError):
    """A bad command-line value, controller knob or environment definition."""


class DataError(AutoTTSError):
    """A download failed or a cached file does not match the catalog."""


# ---- controllers and evaluation ----------------------------------------------------------------


class ControllerError(AutoTTSError):
    """A controller file cannot be loaded or does not meet the contract (DESIGN §5)."""


class InvalidAction(Exception):
    """An action the replay semantics do not admit (the evaluator adds store/question/draw).

    Not an AutoTTSError: it is the controller's mistake, reported per episode."""


class EvaluationError(AutoTTSError):
    """An episode failed and the caller asked evaluation to stop (on_error='raise')."""


class SandboxError(AutoTTSError):
    """A candidate failed in (or before) the sandbox; `verdict` (an
    autotts.sandbox.evaluation.Verdict) says how."""

    def __init__(self, verdict: Any) -> None:
        super().__init__(f"sandbox: {verdict}")
        self.verdict = verdict


class WeakSandboxError(AutoTTSError):
    """The platform cannot keep candidate code away from the host's files or network, and the
    user has not accepted that (--allow-weak-sandbox)."""


# ---- discovery ---------------------------------------------------------------------------------


class AgentError(AutoTTSError):
    """The endpoint refused or kept failing; the run stops and a rerun resumes."""


class SpendCapReached(AutoTTSError):
    """The next request could take spending past the cap (raised before it is sent)."""


# ---- collection --------------------------------------------------------------------------------


class CollectError(AutoTTSError):
    """A work directory or merge that cannot go on (different settings, missing questions)."""


class EngineError(AutoTTSError):
    """The engine or server failed or answered something the collector cannot use."""


class QuestionError(AutoTTSError):
    """A question file or benchmark cannot be read; the message names file, line and field."""


class ShardError(AutoTTSError):
    """One or more collection shards failed; the message names each one with its log's tail."""
