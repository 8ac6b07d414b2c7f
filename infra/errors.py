"""The one exception type that reaches an operator: what went wrong and what to do about it."""

from __future__ import annotations


class UserError(Exception):
    """A failure the operator can fix. Tasks print it without a traceback and exit non-zero."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.problem}\n  fix: {self.fix}" if self.fix else self.problem
