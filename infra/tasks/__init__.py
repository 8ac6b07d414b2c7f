"""Invoke task modules: each parses arguments, calls the library, and reports. No logic lives here."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from invoke.exceptions import Exit

from infra.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])


def reports_user_errors(func: F) -> F:
    """Turn a UserError into its message and exit status 1: an operator never sees a traceback for it."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            raise Exit(f"error: {exc}", code=1) from None
        except KeyboardInterrupt:
            raise Exit("interrupted", code=130) from None

    return wrapper  # type: ignore[return-value]
