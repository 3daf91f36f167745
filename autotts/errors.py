"""Errors a user can act on. The CLI prints their message on one line and exits non-zero."""

from __future__ import annotations


class AutoTTSError(Exception):
    """Base class: anything raised as an AutoTTSError is the user's to fix, not a bug."""


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


class ControllerError(AutoTTSError):
    """A controller file cannot be loaded or does not meet the contract (DESIGN §5)."""
