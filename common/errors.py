"""The user's errors every layer raises, and one-line quotes of an error's cause for messages
that name it without a traceback."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of an error's message, or its type's name when the message is empty:
    what a one-line error message quotes of a cause."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def error_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (only the type when the message is empty)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class ConfigError(Exception):
    """A configuration key is unknown or its value is invalid, or a file or function it names
    cannot be used; the message names the key."""
