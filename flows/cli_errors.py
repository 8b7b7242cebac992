"""The CLI's one way of failing on a user's mistake: one line on stderr and exit code 2, not a traceback."""

from __future__ import annotations

from contextlib import ContextDecorator

import typer


class exit_on(ContextDecorator):  # noqa: N801 - used as a decorator and a `with`, like contextlib's own
    """Turn the listed errors (an unreadable source, a wrong store key, a key file others can read, an invalid
    config...) into ``{prefix}{error}`` on stderr and exit code 2; any other error stays a traceback."""

    def __init__(self, *errors: type[BaseException], prefix: str = "error: ") -> None:
        self.errors, self.prefix = errors, prefix

    def __enter__(self) -> exit_on:
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        if error is not None and isinstance(error, self.errors):
            typer.echo(f"{self.prefix}{error}", err=True)
            raise typer.Exit(code=2) from None
        return False


def store_errors() -> tuple[type[Exception], ...]:
    """What reading the call store or a source can fail with: a wrong or unreadable key, a source that cannot be
    read (imported on use: the CLI's other commands never load the store's crypto)."""
    from components.collect.sources import SourceError
    from components.core.secure_store import KeyFilePermissionError, StoreKeyError

    return StoreKeyError, KeyFilePermissionError, SourceError
