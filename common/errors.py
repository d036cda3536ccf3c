"""The user's errors every layer raises, and one-line quotes of an error's cause."""

from __future__ import annotations

import sys


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (its type's name when empty), to quote in one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def error_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (only the type when the message is empty)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class UserError(Exception):
    """An error the user can act on: commands print it as one line (:func:`say_error`), exit 2.

    Every layer's such errors derive from it (a bad key, a missing file, an unreachable endpoint, a
    damaged shard...).
    """


class ConfigError(UserError):
    """A config key is unknown, invalid, or names an unusable file or function; messages name it."""


def user_message(exc: BaseException) -> str:
    """The one-line message of a user-facing error.

    An error raised in a DataLoader worker or a torchdata thread reaches the main process re-raised
    with the worker's traceback as its message; only the original message is kept.
    """
    text = str(exc).strip()
    if "Original Traceback" not in text:
        return text
    last = text.splitlines()[-1]
    name = type(exc).__name__
    return last.split(f"{name}: ", 1)[1] if f"{name}: " in last else last


def say_error(text: str) -> None:
    """Print ``error: <text>`` to stderr in one write (lines of ranks failing at once never mix)."""
    sys.stderr.write(f"error: {text}\n")  # one write: print() writes the newline apart
    sys.stderr.flush()
